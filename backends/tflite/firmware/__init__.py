"""TensorFlow Lite Micro firmware: the project ``--target mcu`` writes, and its build and run on a Cortex-M4.

``project`` writes the drop-in firmware project (example ``main``, test vector,
Makefile, board files for the Arm MPS2 AN386 board); ``tflm`` knows a TFLM
source tree (which files to compile, its revision); ``cortex_m`` compiles and
links it with ``arm-none-eabi-gcc`` (TFLM objects cached per flags and revision)
and reads flash/RAM from the linker map; ``qemu`` runs the firmware on
``qemu-system-arm -M mps2-an386``; ``host`` runs the PyPI ``tflite-micro``
interpreter. ``check`` ties them together for ``compile`` and ``verify``.
"""
