"""The HTTP job API (``/v1``): FastAPI routes over :class:`iscene_server.jobs.service.JobService`."""
