"""``python -m grokimagine_async``: the ``grokimagine`` command."""

from grokimagine_async._cli import main

if __name__ == "__main__":
    main()
