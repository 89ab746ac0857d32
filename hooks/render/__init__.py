"""Renderers: what the hooks draw and print, apart from the hooks that decide when.

- ``plots``: every figure (matplotlib charts, PIL image grids) and the atomic PNG writers.
- ``tables``: which class rows a capped table shows, and the rich tables the hooks print.
- ``report_page``: ``report.html`` from a run folder, through the Jinja2 template
  ``templates/report.html.j2``.

None of these is a hook or touches an engine: each takes plain data (lists, arrays, a run
folder) and returns a figure, a table or a page, so a notebook or a tool can call them on a
finished run as well.
"""
