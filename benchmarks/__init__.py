"""Side-by-side measurements; each benchmark prints its figures as one JSON line last."""
