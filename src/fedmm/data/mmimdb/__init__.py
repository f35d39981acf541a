"""MM-IMDb (Arevalo et al. 2017): 25,959 movies, a poster and plot(s) each, 23 genres, multilabel.

`layout` finds things in the seed's folder layout, `records` reads and checks rows, `sources` reads the three layouts
users arrive with, `prepare` writes the seed's layout from any of them, `task` is `task=mmimdb`.
"""

from fedmm.data.mmimdb import task as _task  # noqa: F401  (registers task=mmimdb)
