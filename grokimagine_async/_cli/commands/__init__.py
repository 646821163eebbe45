"""The ``grokimagine`` commands, one a module; ``.._app`` registers them."""
