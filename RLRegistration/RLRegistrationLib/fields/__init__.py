"""The maths on grids and fields, with no files and no policies: grids and unit conversions
(``geometry``), warping and composing fields (``spatial``), similarity measures (``similarity``,
``intensity_mapping``), regularizers (``regularizers``) and what a result is measured with (``metrics``)."""
