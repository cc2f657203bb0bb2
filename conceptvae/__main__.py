"""``python -m conceptvae`` (and ``torchrun -m conceptvae``) runs the command-line interface."""

from conceptvae.cli import main

if __name__ == "__main__":
    main()
