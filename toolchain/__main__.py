"""``python -m toolchain`` runs the edgekiln CLI."""

from toolchain.cli import main

if __name__ == "__main__":
    main()
