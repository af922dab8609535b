"""``python -m heedful`` — the ``heedful`` command itself (``[project.scripts]`` in pyproject.toml
names the same function), so ``torchrun -m heedful train CONFIG`` works without the script."""

from heedful.cli import main

if __name__ == "__main__":
    main()
