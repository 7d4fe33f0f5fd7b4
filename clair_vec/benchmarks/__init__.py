"""Speed and memory measurements, run as scripts, never as timed tests: backends (embedded or a
server URI) against exact search, and the service under load. Numbers are reported as ratios
against a baseline measured in the same run.

May import anything below it. Nothing imports it.
"""
