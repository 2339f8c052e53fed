"""Vertebral bodies: each vertebra split into SPINEPS's subregions (body, endplates, arcus,
spinous and costal processes), body heights at stated positions of the mid-sagittal section,
Genant's semi-quantitative fracture grade, listhesis per disc with Meyerding's grade, their
outputs, figure and QC. Derived from the final labels and the canal alone (no network).
Pure numpy/scipy except the figure (PIL)."""
