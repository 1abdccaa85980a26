"""``epm dev``: the whole stack on this machine, supervised."""
