"""`vsf ui`: a local page that renders none and a guidance method side by side on the same seeds."""
