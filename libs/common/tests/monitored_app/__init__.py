"""A small service built the way every Keelson service is, whose one route fails: what
tests/test_monitor.py starts in each way a service starts, with Sentry pointed at a stand-in."""
