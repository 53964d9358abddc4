"""Tests of the plugin ecosystem: discovery, the installed plugins
(taskmw-logging, taskmw-svcs) and the pytest plugin (``taskmw.testing``)."""
