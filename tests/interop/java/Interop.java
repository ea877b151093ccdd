// Java 17 clients of breakwater's interop matrix: java.net.http.HttpClient and
// java.net.http.WebSocket. Run by tests/interop/matrix.py as
//   java -Djdk.httpclient.allowRestrictedHeaders=host Interop.java '<json>'
// and prints one tab-separated CELL line per cell.

import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.WebSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Interop {
    static String cfgJson;

    static String cfg(String key) {
        Matcher m = Pattern.compile("\"" + key + "\":\\s*\"?([^\",}]*)\"?").matcher(cfgJson);
        if (!m.find()) throw new IllegalArgumentException("no " + key + " in config");
        return m.group(1);
    }

    interface Check {
        String run() throws Exception;
    }

    static void cell(String client, String server, String path, String name, Check c) {
        long t0 = System.nanoTime();
        boolean ok = true;
        String detail;
        try {
            detail = c.run();
        } catch (Throwable e) {
            ok = false;
            detail = e.getClass().getSimpleName() + ": " + e.getMessage();
        }
        long ms = (System.nanoTime() - t0) / 1_000_000;
        System.out.println(String.join("\t", "CELL", client, server, path, name, ok ? "PASS" : "FAIL",
                Long.toString(ms), String.valueOf(detail).replaceAll("[\\t\\r\\n]+", " ")));
        System.out.flush();
    }

    static void check(boolean cond, String msg) {
        if (!cond) throw new AssertionError(msg);
    }

    static void eq(Object got, Object want, String what) {
        check(got.equals(want), what + ": got " + got + ", want " + want);
    }

    static String sha(byte[] b) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b));
    }

    static String shaField(String json) {
        Matcher m = Pattern.compile("\"sha256\":\\s*\"([0-9a-f]+)\"").matcher(json);
        return m.find() ? m.group(1) : json;
    }

    static HttpRequest.Builder req(String url) {
        return HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10));
    }

    static String sse(HttpClient c, HttpRequest r) throws Exception {
        long t0 = System.nanoTime();
        HttpResponse<InputStream> resp = c.send(r, HttpResponse.BodyHandlers.ofInputStream());
        eq(resp.statusCode(), 200, "status");
        try (InputStream in = resp.body()) {
            byte[] buf = new byte[4096];
            int n = in.read(buf);
            long tFirst = (System.nanoTime() - t0) / 1_000_000;
            String first = new String(buf, 0, Math.max(n, 0));
            String body = first + new String(in.readAllBytes());
            long tEnd = (System.nanoTime() - t0) / 1_000_000;
            check(first.contains("data: one"), "first read was " + first);
            check(body.contains("data: two"), "stream ended without event two: " + body);
            check(tFirst < Double.parseDouble(cfg("sseFirstWithin")) * 1000, "first event after " + tFirst + " ms (buffered?)");
            check(tEnd - tFirst >= Double.parseDouble(cfg("sseGapAtLeast")) * 1000, "events " + (tEnd - tFirst) + " ms apart: buffered");
            return "first event at " + tFirst + " ms, end at " + tEnd + " ms";
        }
    }

    public static void main(String[] args) throws Exception {
        cfgJson = args[0];
        String inbound = cfg("inbound"), outbound = cfg("outbound"), py = cfg("py");
        String flaky = cfg("flaky"), broken = cfg("broken"), want = cfg("sha");
        byte[] payload = Files.readAllBytes(Path.of(cfg("payload")));
        String[] ob = outbound.split(":");
        ProxySelector proxy = ProxySelector.of(new InetSocketAddress(ob[0], Integer.parseInt(ob[1])));

        HttpClient h2default = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        HttpClient h11 = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofSeconds(5)).build();
        HttpClient viaProxy = HttpClient.newBuilder().proxy(proxy).connectTimeout(Duration.ofSeconds(5)).build();
        String in = "http://" + inbound;

        String dflt = "java HttpClient (default HTTP_2: Upgrade h2c)";
        cell(dflt, "python h1", "inbound", "GET served as HTTP/1.1", () -> {
            HttpResponse<String> r = h2default.send(req(in + "/hello").build(), HttpResponse.BodyHandlers.ofString());
            eq(r.statusCode(), 200, "status");
            eq(r.body(), "hello from python\n", "body");
            eq(r.version(), HttpClient.Version.HTTP_1_1, "version");
            return "200 " + r.version();
        });
        cell(dflt, "python h1", "inbound", "1 MiB download sha256", () -> {
            HttpResponse<byte[]> r = h2default.send(req(in + "/download").build(), HttpResponse.BodyHandlers.ofByteArray());
            eq(r.statusCode(), 200, "status");
            eq(sha(r.body()), want, "sha256");
            return "1 MiB intact, " + r.version();
        });
        cell(dflt, "python h1", "inbound", "SSE incremental", () -> sse(h2default, req(in + "/sse").build()));

        String one = "java HttpClient HTTP_1_1";
        cell(one, "python h1", "inbound", "1 MiB upload + expectContinue", () -> {
            HttpRequest r = req(in + "/upload").expectContinue(true).POST(HttpRequest.BodyPublishers.ofByteArray(payload)).build();
            HttpResponse<String> resp = h11.send(r, HttpResponse.BodyHandlers.ofString());
            eq(resp.statusCode(), 200, "status");
            eq(shaField(resp.body()), want, "sha256 at the app");
            return "1 MiB intact";
        });
        cell(one, "python h1", "outbound Host", "GET status+body", () -> {
            HttpResponse<String> r = h11.send(req("http://" + outbound + "/hello").header("Host", py).build(), HttpResponse.BodyHandlers.ofString());
            eq(r.statusCode(), 200, "status");
            eq(r.body(), "hello from python\n", "body");
            return "200";
        });

        String px = "java HttpClient ProxySelector";
        cell(px, "python h1", "outbound proxy", "GET status+body", () -> {
            HttpResponse<String> r = viaProxy.send(req("http://" + py + "/hello").build(), HttpResponse.BodyHandlers.ofString());
            eq(r.statusCode(), 200, "status");
            eq(r.body(), "hello from python\n", "body");
            return "200 " + r.version();
        });
        cell(px, "python h1", "outbound proxy", "1 MiB download sha256", () -> {
            HttpResponse<byte[]> r = viaProxy.send(req("http://" + py + "/download").build(), HttpResponse.BodyHandlers.ofByteArray());
            eq(sha(r.body()), want, "sha256");
            return "1 MiB intact";
        });
        cell(px, "python h1", "outbound proxy", "1 MiB upload + expectContinue", () -> {
            HttpRequest r = req("http://" + py + "/upload").expectContinue(true).POST(HttpRequest.BodyPublishers.ofByteArray(payload)).build();
            HttpResponse<String> resp = viaProxy.send(r, HttpResponse.BodyHandlers.ofString());
            eq(resp.statusCode(), 200, "status");
            eq(shaField(resp.body()), want, "sha256 at the app");
            return "1 MiB intact";
        });
        cell(px, "python h1", "outbound proxy", "SSE incremental", () -> sse(viaProxy, req("http://" + py + "/sse").build()));
        cell(px, "python 503,503,200", "outbound proxy", "retried to 200, 3 hits", () -> {
            HttpResponse<String> r = viaProxy.send(req("http://" + flaky + "/flaky/java").build(), HttpResponse.BodyHandlers.ofString());
            eq(r.statusCode(), 200, "status");
            HttpResponse<String> hits = h11.send(req("http://" + flaky + "/hits/java").build(), HttpResponse.BodyHandlers.ofString());
            eq(hits.body(), "3", "upstream hits");
            return "200 after 503, 503";
        });
        cell(px, "python always 503", "outbound proxy", "circuit-open + Retry-After", () -> {
            List<Integer> seen = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                HttpResponse<String> r = viaProxy.send(req("http://" + broken + "/x").build(), HttpResponse.BodyHandlers.ofString());
                seen.add(r.statusCode());
                if (r.statusCode() == 503 && r.headers().firstValue("x-breakwater-reason").orElse("").equals("circuit-open")) {
                    String ra = r.headers().firstValue("retry-after").orElse("");
                    check(!ra.isEmpty(), "circuit-open without Retry-After");
                    return "statuses " + seen + ", retry-after " + ra;
                }
            }
            throw new AssertionError("no circuit-open after 8 requests: statuses " + seen);
        });

        cell("java WebSocket", "python h1 ws echo", "inbound", "WebSocket echo", () -> {
            LinkedBlockingQueue<String> got = new LinkedBlockingQueue<>();
            WebSocket.Listener listener = new WebSocket.Listener() {
                StringBuilder sb = new StringBuilder();

                public CompletionStage<?> onText(WebSocket ws, CharSequence data, boolean last) {
                    sb.append(data);
                    if (last) {
                        got.add(sb.toString());
                        sb = new StringBuilder();
                    }
                    ws.request(1);
                    return null;
                }
            };
            WebSocket ws = h11.newWebSocketBuilder().connectTimeout(Duration.ofSeconds(5))
                    .buildAsync(URI.create("ws://" + inbound + "/ws"), listener).get(10, TimeUnit.SECONDS);
            String[] msgs = {"hello", "z".repeat(70000)};
            for (String m : msgs) {
                ws.sendText(m, true).get(10, TimeUnit.SECONDS);
                String back = got.poll(10, TimeUnit.SECONDS);
                check(m.equals(back), "echo differs: " + (back == null ? "nothing" : back.length() + " chars"));
            }
            ws.sendClose(WebSocket.NORMAL_CLOSURE, "").get(5, TimeUnit.SECONDS);
            return msgs.length + " messages echoed (up to 70000 chars)";
        });
        System.exit(0);
    }
}
