"""Images and transforms in and out: reading and checking images (``imaging``, ``integrity``, ``masks``),
writing results (``export``), and the arrays Slicer's nodes hold (``slicer_arrays``)."""
