"""The live console: the farm seen once a second through its runtime and its own metrics, the load
test's faults and users on request - reached at /console/ through nginx, with demo controls only.

`python -m console STATE_DIR/farm.json`, run by the farm's supervisor (farmctl/native/supervisord.conf.j2).
One gevent process: Locust's users (console.crowd) and the web server (console.web) share its loop."""
