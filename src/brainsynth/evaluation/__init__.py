"""evaluate's metrics: the catalogue (each metric's identity, once) and the metric families (how
they are computed, as functions of plain arrays)."""
