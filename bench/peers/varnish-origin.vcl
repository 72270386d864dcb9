# Varnish in front of a Tessera origin, as the Tessera edge is in origin mode: GET /{path} is
# the origin's /api/v1/files/{path}; the origin's Cache-Control (public, max-age=60) sets the
# TTL; memory storage of the same size (-s malloc on the command line). {{ORIGIN_HOST}} and
# {{ORIGIN_PORT}} are filled in by tessera-bench compare.
vcl 4.1;
backend origin {
    .host = "{{ORIGIN_HOST}}";
    .port = "{{ORIGIN_PORT}}";
}
sub vcl_recv {
    set req.url = "/api/v1/files" + req.url;
}
