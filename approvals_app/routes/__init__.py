"""One module a resource: keys, sign requests, approval tasks, request status, health."""
