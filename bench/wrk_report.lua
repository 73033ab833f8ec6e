-- wrk script: prints one machine-readable line when the run ends, and in forward-proxy
-- mode sends absolute-form requests (the request line carries the whole URL).
--   wrk ... -s wrk_report.lua http://proxy:port/ -- [ABSOLUTE_URL]
-- wrk.init calls init() before it formats the request, so wrk.path set here is what
-- goes on the request line, byte for byte. Host then names the URL's authority, as
-- curl -x and browsers send it (RFC 9112 3.2.2), not the proxy's address.

function init(args)
   if args[1] ~= nil and args[1] ~= "" then
      wrk.path = args[1]
      local authority = string.match(args[1], "^%a+://([^/?#]+)")
      if authority then
         wrk.headers["Host"] = authority
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
      '"write":%d,"status":%d,"timeout":%d,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
      '"mean_us":%.1f,"max_us":%.0f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max))
end
