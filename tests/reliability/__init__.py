"""Reliability suite: crash (kill -9) loop, dependency faults and a bounded soak (issue 7)."""
