// Per image, each class's highest score from a TF.js detector's class outputs, with TF.js
// itself (CPU backend): how bench/bench_detectors.py measures a detector it has not converted.
//   NODE_PATH=/tmp/tfjs/node_modules node bench/tfjs/class_scores.js model.json inputs.f32 N C H W out.f32
// inputs.f32: N float32 tensors of shape [1, C, H, W] (or [1, H, W, C] as the model wants),
// back to back; out.f32: N x 80 float32, the maximum over the outputs whose last axis is 80.
const tf = require('@tensorflow/tfjs');
const fs = require('fs');
const path = require('path');
(async () => {
  await tf.setBackend('cpu');
  const [mj, inputs, n, a, b, c, out] = process.argv.slice(2);
  const m = JSON.parse(fs.readFileSync(mj));
  const dir = path.dirname(mj);
  const specs = []; const bufs = [];
  for (const g of m.weightsManifest) { for (const w of g.weights) specs.push(w); for (const p of g.paths) bufs.push(fs.readFileSync(path.join(dir, p))); }
  const all = Buffer.concat(bufs);
  const model = await tf.loadGraphModel(tf.io.fromMemory({modelTopology: m.modelTopology, weightSpecs: specs,
    weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength), format: m.format, signature: m.signature}));
  const data = fs.readFileSync(inputs);
  const shape = [1, +a, +b, +c]; const size = (+a) * (+b) * (+c);
  const result = new Float32Array((+n) * 80);
  const started = Date.now();
  for (let i = 0; i < +n; i++) {
    const x = tf.tensor(new Float32Array(data.buffer, data.byteOffset + i * size * 4, size), shape);
    const outs = await model.executeAsync(x);
    for (const o of (Array.isArray(outs) ? outs : [outs])) {
      if (o.shape[o.shape.length - 1] !== 80) continue;
      const best = await o.reshape([-1, 80]).max(0).data();
      for (let k = 0; k < 80; k++) result[i * 80 + k] = Math.max(result[i * 80 + k], best[k]);
    }
    tf.dispose([x, outs]);
  }
  fs.writeFileSync(out, Buffer.from(result.buffer));
  console.log(JSON.stringify({images: +n, ms_per_image: (Date.now() - started) / (+n)}));
})();
