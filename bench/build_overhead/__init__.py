"""Build orchestration overhead (issue 7): ``edgekiln build`` against the same steps done by hand.

    python -m bench.build_overhead                 # 3 interleaved rounds (~9 min on 2 shared cores)
    python -m bench.build_overhead --repeats 5     # more rounds
    python -m bench.build_overhead --no-timers     # skip the extra, instrumented run of B
    python -m bench.build_overhead --render-only   # rewrite the .md from the .json (no measuring)

Writes bench/build_overhead.md (the record) and bench/build_overhead.json (the raw numbers).
Scratch files live in bench/.cache/build_overhead/.

The source is ``bench.run``'s MobileNetV2-sized CNN (FP32 ONNX, opset 17, 1x3x224x224), the
calibration set a folder of PNGs cut from scikit-image's bundled photos. Per round, in an order
rotated from round to round, four variants run as fresh processes and are timed by wall clock:

* A: ``edgekiln build`` with its checks (verification, accuracy guard, agreement, latency);
* B: the same build with the optional checks off (``--no-verify --no-guard --bench-iterations 0``);
* C: the raw tools by hand (onnxsim, ORT ``quantize_static``, onnx2tf + TFLiteConverter,
  the opset-13 conversion) in one fresh interpreter (``python -m bench.build_overhead --raw``);
* D: A's build again, fully cached (its stage cache was filled once before the rounds).

The orchestration overhead is the median over rounds of that round's B / C; the cost of the
checks the median of A / C. One extra run of B with wall-clock timers around edgekiln's functions
(``--instrument``), paired with a run of C, says where B's extra time goes. Nothing runs at import time.

Layout (each module one job; ``python -m bench.build_overhead`` runs ``__main__``):

* ``params``: what is measured (paths, model, images, targets, variants) and the progress line;
* ``workspace``: the scratch folder, its model and images, the variants' command lines, ``setup``;
* ``raw``: variant C, the raw tools by hand (``raw_build``; the ``--raw CONFIG`` child process);
* ``rounds``: running and timing each variant as a fresh process, the rounds, the import costs;
* ``instrument``: the timed run of B (``--instrument``) and ``timed_pair``;
* ``results``: ``RoundResult``, ``Record`` (and its JSON), ``Summary`` and ``summarize``;
* ``breakdown``: which piece of work the time goes to;
* ``tables`` and ``render``: bench/build_overhead.md.
"""

from bench.build_overhead.raw import raw_build  # the record names the raw path ``bench.build_overhead.raw_build``

__all__ = ["raw_build"]
