"""The texture settings a job can choose (one place for the CLI, the API and the engine; no heavy imports)."""

TEXTURES = ("baked", "vertex")  # a baked base-colour texture (vertex colours kept too), or vertex colours only
MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE, DEFAULT_TEXTURE_SIZE = 512, 4096, 1024  # texels per side
