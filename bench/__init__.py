"""`make bench`: what the balancer, the session layer and Redis cost per request, measured with wrk."""
