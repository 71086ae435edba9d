"""Baked base-colour textures: a UV atlas of the decimated mesh (:mod:`.atlas`), its texels' surface points
(:mod:`.raster`), their colours from the full-resolution mesh (:mod:`.closest`), the gutter fill
(:mod:`.dilate`), all put together by :func:`.bake.bake_texture`. Pure numpy/scipy (it runs in the clean-up
workers, which never import torch)."""
