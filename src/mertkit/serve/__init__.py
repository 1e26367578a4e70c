"""`mert serve`: a local web page over a feature store. :mod:`mertkit.serve.catalog` answers
the questions (tracks, neighbours, map, probe predictions, uploads) and
:mod:`mertkit.serve.server` serves them with the standard library's HTTP server on 127.0.0.1,
with the page in ``static/`` (plain HTML, JavaScript and CSS; nothing from the network)."""
