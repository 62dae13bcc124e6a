"""deepix bin edges (upper bounds of every bin but the last, which is open): see DESIGN.md."""

BOOKMARK_EDGES: tuple[float, ...] = (10, 30, 50, 70, 100, 130, 170, 220, 300, 400, 550, 800, 1300, 2700)
VIEW_EDGES: tuple[float, ...] = (500, 700, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6500, 8500, 12000, 19000, 35000)
SANITY_EDGES: tuple[float, ...] = (2, 4, 6, 7)
