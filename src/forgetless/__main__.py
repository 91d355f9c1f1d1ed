"""``python -m forgetless ARGS`` is ``forgetless ARGS`` (``torchrun -m forgetless run ...`` needs it)."""

from forgetless.cli.main import main

if __name__ == "__main__":
    main()
