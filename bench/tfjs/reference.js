// The reference outputs of a TF.js graph model, from TF.js itself (CPU backend, no native code):
//   npm install --prefix /tmp/tfjs @tensorflow/tfjs@4
//   NODE_PATH=/tmp/tfjs/node_modules node bench/tfjs/reference.js model.json inputs.json out
// inputs.json: {"inputs": {name: {"shape": [..], "file": "x.f32"} | {"scalar": v}}, "outputs": [names]}
// writes out.<i>.f32 (raw little-endian float32) per output and out.json (shapes, ms).
const tf = require('@tensorflow/tfjs');
const fs = require('fs');
const path = require('path');
(async () => {
  await tf.setBackend('cpu');
  const [mj, ij, prefix] = process.argv.slice(2);
  const m = JSON.parse(fs.readFileSync(mj));
  const dir = path.dirname(mj);
  const specs = []; const bufs = [];
  for (const g of m.weightsManifest) { for (const w of g.weights) specs.push(w); for (const p of g.paths) bufs.push(fs.readFileSync(path.join(dir, p))); }
  const all = Buffer.concat(bufs);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({modelTopology: m.modelTopology, weightSpecs: specs, weightData, format: m.format, signature: m.signature}));
  const inp = JSON.parse(fs.readFileSync(ij));
  const feeds = {};
  for (const [k, v] of Object.entries(inp.inputs)) {
    if ('scalar' in v) feeds[k] = tf.tensor(v.scalar);
    else { const b = fs.readFileSync(v.file); feeds[k] = tf.tensor(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4), v.shape); }
  }
  const t0 = Date.now();
  const outs = await model.executeAsync(feeds, inp.outputs);
  const arr = Array.isArray(outs) ? outs : [outs];
  const meta = {};
  for (let i = 0; i < arr.length; i++) {
    const d = await arr[i].data();
    fs.writeFileSync(`${prefix}.${i}.f32`, Buffer.from(new Float32Array(d).buffer));
    meta[inp.outputs[i]] = arr[i].shape;
  }
  meta.ms = Date.now() - t0;
  fs.writeFileSync(`${prefix}.json`, JSON.stringify(meta));
  console.log(JSON.stringify(meta));
})();
