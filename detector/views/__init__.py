"""Human views over the event stream (``detector top``)."""
