"""Renderers: what the hooks draw and print, apart from the hooks that decide when.

- ``plots``: every figure (matplotlib charts, PIL image grids) and the atomic PNG writers.
- ``tables``: which class rows a capped table shows, and the rich tables the hooks print.
- ``report_page``: ``report.html`` from a run folder, through the Jinja2 template
  ``templates/report.html.j2``.
- ``csv_log``: ``CsvLog``, a CSV the hooks append to on the artefact writer, cut back to the
  resume point at fit start.
- ``verbosity``: the console levels the table-printing hooks take.

None of these is a hook or touches an engine: each takes plain data (lists, arrays, a run
folder, rows) and returns or writes a figure, a table, a page or a CSV, so a notebook or a
tool can call them on a finished run as well.
"""
