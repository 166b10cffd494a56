// The load client of bench/serve.lua (Node 18+, no packages): `clients` concurrent clients,
// each making `requests` streamed /v1/completions in a row, against any OpenAI-compatible
// server. Every server-sent event is timestamped as it arrives, and every stream is checked:
// status 200, each event a JSON chunk, [DONE] last, valid UTF-8, usage.completion_tokens
// equal to the tokens asked for (ignore_eos). Prints one JSON line: counts (ok, rejected
// with 503/429, lost: cut or never answered, garbled: answered wrongly), wall seconds,
// tokens, content events, and percentiles of time to first token and of the gaps between
// content events (inter-token latency), in ms.
//   node serve_client.mjs '{"url":"http://127.0.0.1:8080","clients":4,"requests":3,"tokens":64}'
const cfg = JSON.parse(process.argv[2]);

function pct(xs, p) {
  if (xs.length === 0) return null;
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(s.length * p) - 1))];
}

async function one(client, k) {
  const body = {
    prompt: `Story ${k} of client ${client}. Once upon a time`, max_tokens: cfg.tokens, ignore_eos: true,
    // every sampling setting explicit: the two servers' defaults differ (llama-server c392e5094:
    // top_p 0.9, min_p 0.1; moonlm: top_p 1, no min_p), so neither default decides the A/B
    temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, seed: client * 100 + k,
    stream: true, stream_options: { include_usage: true },
  };
  if (cfg.model) body.model = cfg.model;
  const headers = { "Content-Type": "application/json" };
  if (cfg.key) headers.Authorization = "Bearer " + cfg.key;
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(cfg.url + "/v1/completions", { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    return { kind: "lost", why: "no answer: " + (e.cause?.code ?? e.message) };
  }
  if (res.status === 503 || res.status === 429) {
    await res.arrayBuffer();
    return { kind: "rejected", status: res.status };
  }
  if (res.status !== 200) return { kind: "garbled", why: `status ${res.status}: ${(await res.text()).slice(0, 200)}` };
  const dec = new TextDecoder("utf-8", { fatal: true });
  let buf = "", done = false, usage = null, garbled = null;
  const times = [];
  try {
    for await (const part of res.body) {
      const now = performance.now();
      buf += dec.decode(part, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith("data: ")) { garbled ??= "not a data line: " + ev.slice(0, 80); continue; }
        const data = ev.slice(6);
        if (done) { garbled ??= "data after [DONE]"; continue; }
        if (data === "[DONE]") { done = true; continue; }
        let c;
        try { c = JSON.parse(data); } catch { garbled ??= "not JSON: " + data.slice(0, 80); continue; }
        if (c.error) { garbled ??= "error event: " + JSON.stringify(c.error).slice(0, 200); continue; }
        if (c.usage && c.usage.completion_tokens != null) usage = c.usage;
        const ch = c.choices?.[0];
        const t = ch?.text ?? ch?.delta?.content;
        if (t) times.push(now);
      }
    }
    dec.decode(); // throws on a truncated UTF-8 character at the end
  } catch (e) {
    return { kind: "lost", why: "stream: " + (e.cause?.code ?? e.message), events: times.length };
  }
  if (!done) return { kind: "lost", why: "no [DONE]", events: times.length };
  if (garbled) return { kind: "garbled", why: garbled };
  if (buf !== "") return { kind: "garbled", why: "bytes after the last event" };
  if (!usage || usage.completion_tokens !== cfg.tokens) {
    return { kind: "garbled", why: `completion_tokens ${usage?.completion_tokens}, asked ${cfg.tokens}` };
  }
  const itl = [];
  for (let j = 1; j < times.length; j++) itl.push(times[j] - times[j - 1]);
  return { kind: "ok", ttft: times[0] - t0, itl, tokens: usage.completion_tokens, events: times.length };
}

const results = [];
const t0 = performance.now();
await Promise.all(Array.from({ length: cfg.clients }, async (_, c) => {
  for (let k = 0; k < cfg.requests; k++) results.push(await one(c + 1, k + 1));
}));
const wall = (performance.now() - t0) / 1000;

const out = { ok: 0, rejected: 0, lost: 0, garbled: 0, wall, tokens: 0, events: 0, why: [] };
const ttft = [], itl = [];
for (const r of results) {
  out[r.kind]++;
  if (r.kind === "ok") {
    out.tokens += r.tokens;
    out.events += r.events;
    ttft.push(r.ttft);
    for (const g of r.itl) itl.push(g);
  } else if (r.why && out.why.length < 5) out.why.push(r.why);
}
out.ttft_p50 = pct(ttft, 0.5);
out.ttft_p99 = pct(ttft, 0.99);
out.itl_p50 = pct(itl, 0.5);
out.itl_p99 = pct(itl, 0.99);
console.log(JSON.stringify(out));
