"""Integrations of taskmw with web frameworks: :mod:`taskmw.contrib.django`.

Each lives in its own subpackage and imports its framework only when used,
so installing taskmw never needs one.
"""
