// Node's http2.createServer (h2c, no HTTP/1.1): /hello, /download, /upload
// (sha256 of the body), /sse. Prints its port on stdout once listening.
'use strict';
const http2 = require('node:http2');
const crypto = require('node:crypto');
const fs = require('node:fs');

const payload = fs.readFileSync(process.argv[2]);
const server = http2.createServer();
server.on('stream', (stream, headers) => {
  const path = headers[':path'];
  if (path === '/hello') {
    stream.respond({ ':status': 200, 'content-type': 'text/plain' });
    stream.end('hello from node h2\n');
  } else if (path === '/download') {
    stream.respond({ ':status': 200, 'content-length': payload.length });
    stream.end(payload);
  } else if (path === '/upload') {
    const hash = crypto.createHash('sha256');
    let len = 0;
    stream.on('data', (c) => { hash.update(c); len += c.length; });
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ sha256: hash.digest('hex'), len, expect: headers.expect || '' }));
    });
  } else if (path === '/sse') {
    stream.respond({ ':status': 200, 'content-type': 'text/event-stream' });
    stream.write('data: one\n\n');
    setTimeout(() => stream.end('data: two\n\n'), 1000);
  } else {
    stream.respond({ ':status': 404 });
    stream.end();
  }
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.on('SIGTERM', () => process.exit(0));
