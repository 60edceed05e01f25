"""The built-in domains, written in the absdsl DSL (``*.absd``), loaded by name."""
