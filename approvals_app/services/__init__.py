"""Decisions the API takes on a caller's behalf, out of the routes: routes parse the
request, call one of these, and shape the answer."""
