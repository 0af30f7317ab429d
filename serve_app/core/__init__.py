"""The service's core, free of Ray and HTTP: settings, the database and its stores (jobs, API
keys, shotgun selections), artifacts, result links and the typed job records. Deployments
import this and `pipelines` only; the HTTP layer imports everything below it."""
