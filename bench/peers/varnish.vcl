# Varnish configured like a Tessera edge in upstream mode: same upstream, the response's own
# Cache-Control decides the TTL, memory storage of the same size (-s malloc,{{CACHE_MB}}m on the
# command line). {{UPSTREAM_HOST}} and {{UPSTREAM_PORT}} are filled in by tessera-bench.
vcl 4.1;
backend origin {
    .host = "{{UPSTREAM_HOST}}";
    .port = "{{UPSTREAM_PORT}}";
}
