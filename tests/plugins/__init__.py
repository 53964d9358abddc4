"""Tests of taskmw's plugin support: discovery of installed plugins, the
pytest plugin (``taskmw.testing``) and the plugin of ``docs/plugins.md``. The
plugin distributions' own tests are in ``plugins/<name>/tests/``."""
