#!/usr/bin/env node
// Score a CSV of query,title pairs (any other columns are kept) with the exported relevance model,
// using onnxruntime-node and the shipped tokenizer.json; writes the CSV back with a `relevance` column,
// P(relevant), to OUT.csv or stdout. tokenizer.json and metadata.json are read from beside the model.
//   node score.js models/model.onnx pairs.csv [scored.csv]
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const { Tokenizer } = require('tokenizers');
const { parse } = require('csv-parse/sync');

const BATCH_SIZE = 64;
// Where each model input comes from in a tokenizers Encoding; metadata.json says which the model takes.
const FIELDS = { input_ids: 'getIds', token_type_ids: 'getTypeIds', attention_mask: 'getAttentionMask' };

const csvCell = (value) => (/[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value);

async function main(modelPath, pairsPath, outPath) {
  const dir = path.dirname(modelPath);
  const metadata = JSON.parse(fs.readFileSync(path.join(dir, 'metadata.json'), 'utf8'));
  const tokenizerPath = path.join(dir, 'tokenizer.json');
  // encode() truncates as tokenizer.json says. The Node binding cannot encode a batch of pairs, so a
  // batch is padded here to its longest pair with tokenizer.json's own padding settings.
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const padding = JSON.parse(fs.readFileSync(tokenizerPath, 'utf8')).padding;
  if (!padding) throw new Error(`${tokenizerPath}: no padding settings; export the model again`);
  const unknown = metadata.inputs.filter((name) => !(name in FIELDS));
  if (unknown.length) throw new Error(`${modelPath}: no tokenizer output for model input(s) ${unknown.join(',')}`);
  const padOptions = { padId: padding.pad_id, padTypeId: padding.pad_type_id, padToken: padding.pad_token,
    direction: padding.direction.toLowerCase() };
  const session = await ort.InferenceSession.create(modelPath);
  const relevant = metadata.labels.indexOf('relevant');
  const sigmoid = metadata.probability === 'sigmoid'; // a one-logit model; else softmax over the labels

  let header;
  const rows = parse(fs.readFileSync(pairsPath), { bom: true, skip_empty_lines: true, columns: (names) => {
    const missing = ['query', 'title'].filter((name) => !names.includes(name));
    if (missing.length) throw new Error(`${pairsPath}: missing column(s) ${missing.join(',')}; expected query,title`);
    return (header = names);
  } });
  if (!rows.length) throw new Error(`${pairsPath}: no rows; expected a header with query,title and pairs`);

  const out = [[...header, 'relevance'].map(csvCell).join(',')];
  for (let start = 0; start < rows.length; start += BATCH_SIZE) {
    const batch = rows.slice(start, start + BATCH_SIZE);
    const encodings = await Promise.all(batch.map((row) => tokenizer.encode(row.query, row.title)));
    const longest = Math.max(...encodings.map((encoding) => encoding.getLength()));
    encodings.forEach((encoding) => encoding.pad(longest, padOptions));
    const feeds = Object.fromEntries(metadata.inputs.map((name) => [name, new ort.Tensor('int64',
      BigInt64Array.from(encodings.flatMap((encoding) => encoding[FIELDS[name]]()), BigInt), [batch.length, longest])]));
    const logits = (await session.run(feeds))[metadata.output].data;
    const labels = metadata.labels.length;
    batch.forEach((row, i) => {
      const rowLogits = Array.from(logits.subarray(i * labels, (i + 1) * labels));
      const top = Math.max(...rowLogits);
      const exps = rowLogits.map((logit) => Math.exp(logit - top));
      const relevance = sigmoid ? 1 / (1 + Math.exp(-rowLogits[relevant]))
        : exps[relevant] / exps.reduce((sum, value) => sum + value, 0);
      out.push([...header.map((name) => csvCell(row[name])), String(relevance)].join(','));
    });
  }
  fs.writeFileSync(outPath || 1, out.join('\n') + '\n');
}

const [modelPath, pairsPath, outPath] = process.argv.slice(2);
if (!pairsPath) {
  console.error('usage: node score.js MODEL.onnx PAIRS.csv [SCORED.csv]');
  process.exit(2);
}
main(modelPath, pairsPath, outPath).catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
