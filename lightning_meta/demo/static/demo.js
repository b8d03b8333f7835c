// The demo page: drawing pads for the classes and the test character, talking to the JSON API of
// lightning_meta/demo/server.py. Strokes go to the server as point lists in canvas pixels; the server turns
// them into training images (lightning_meta/demo/render.py), so the page does no image processing itself.
"use strict";

const CLASS_SIDE = 140; // canvas pixels of a class pad
let info = null;
const pads = []; // one Pad per class
let testPad = null;

class Pad {
  constructor(canvas, penWidth) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.penWidth = penWidth * canvas.width; // the server's pen, as a fraction of the side
    this.strokes = [];
    this.drawing = false;
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { this.drawing = false; });
    this.redraw();
  }

  point(e) {
    // Canvas pixels from the pointer: inside the border, scaled if CSS resized the canvas.
    const box = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - box.left - this.canvas.clientLeft) * this.canvas.width) / this.canvas.clientWidth;
    const y = ((e.clientY - box.top - this.canvas.clientTop) * this.canvas.height) / this.canvas.clientHeight;
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  }

  down(e) {
    if (e.button !== 0) return;
    this.canvas.setPointerCapture(e.pointerId);
    this.drawing = true;
    this.strokes.push([this.point(e)]);
    this.redraw();
  }

  move(e) {
    if (!this.drawing) return;
    this.strokes[this.strokes.length - 1].push(this.point(e));
    this.redraw();
  }

  redraw() {
    const ctx = this.ctx;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.strokeStyle = ctx.fillStyle = "#000";
    ctx.lineWidth = this.penWidth;
    ctx.lineCap = ctx.lineJoin = "round";
    for (const stroke of this.strokes) {
      ctx.beginPath();
      ctx.moveTo(...stroke[0]);
      if (stroke.length === 1) ctx.arc(stroke[0][0], stroke[0][1], this.penWidth / 2, 0, 2 * Math.PI);
      for (const p of stroke.slice(1)) ctx.lineTo(...p);
      stroke.length === 1 ? ctx.fill() : ctx.stroke();
    }
  }

  clear() {
    this.strokes = [];
    this.redraw();
  }

  isEmpty() {
    return this.strokes.length === 0;
  }

  toDrawing() {
    return { strokes: this.strokes, size: this.canvas.width }; // a drawing of the JSON API
  }
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function addClass() {
  if (pads.length >= info.ways) return;
  const card = document.createElement("div");
  card.className = "card class";
  card.innerHTML = `<h2>Class ${pads.length + 1}</h2>
    <canvas data-role="class" width="${CLASS_SIDE}" height="${CLASS_SIDE}"></canvas>
    <div class="row"><button class="clear" type="button">clear</button>
      <canvas class="seen" width="${info.image_size}" height="${info.image_size}" title="what the model sees"></canvas>
    </div>`;
  document.getElementById("classes").appendChild(card);
  const pad = new Pad(card.querySelector("canvas"), info.pen_width);
  card.querySelector(".clear").addEventListener("click", () => pad.clear());
  pads.push(pad);
  resetResults();
}

function removeClass() {
  if (pads.length <= info.min_ways) return;
  pads.pop().canvas.closest(".card").remove();
  resetResults();
}

function resetResults() {
  const bars = document.getElementById("bars");
  bars.innerHTML = pads.map((_, i) => `<div class="bar" data-class="${i}" data-probability="">
      <span>Class ${i + 1}</span><div class="track"><div class="fill"></div></div><span class="value">–</span>
    </div>`).join("");
  document.querySelectorAll(".card.predicted").forEach((c) => c.classList.remove("predicted"));
  document.getElementById("add-class").disabled = pads.length >= info.ways;
  document.getElementById("remove-class").disabled = pads.length <= info.min_ways;
  status("");
}

function showImage(canvas, rows) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(rows.length, rows.length);
  rows.flat().forEach((ink, i) => {
    const v = Math.round(255 * (1 - ink));
    image.data.set([v, v, v, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
}

function showAnswer(answer) {
  answer.probabilities.forEach((p, i) => {
    const bar = document.querySelector(`.bar[data-class="${i}"]`);
    bar.dataset.probability = String(p);
    bar.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bar.querySelector(".value").textContent = `${(100 * p).toFixed(1)} %`;
  });
  pads.forEach((pad, i) => {
    pad.canvas.closest(".card").classList.toggle("predicted", i === answer.predicted);
    showImage(pad.canvas.closest(".card").querySelector(".seen"), answer.images.classes[i][0]);
  });
  showImage(document.getElementById("test-seen"), answer.images.test);
  status(`Class ${answer.predicted + 1} (${(100 * answer.probabilities[answer.predicted]).toFixed(1)} %)`);
  document.getElementById("status").style.color = "#2a7";
}

async function classify() {
  document.getElementById("status").style.color = "";
  const empty = pads.findIndex((pad) => pad.isEmpty());
  if (empty >= 0) return status(`Draw an example of class ${empty + 1} first.`);
  if (testPad.isEmpty()) return status("Draw a test character first.");
  const body = { classes: pads.map((pad) => [pad.toDrawing()]), test: testPad.toDrawing(), return_images: true };
  document.body.dataset.state = "busy";
  try {
    const response = await fetch("/api/classify", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) return status(answer.error);
    showAnswer(answer);
  } catch (error) {
    status(`The server did not answer (${error}); is demo.py still running?`);
  } finally {
    document.body.dataset.state = "ready";
  }
}

async function start() {
  info = await (await fetch("/api/info")).json();
  const name = info.checkpoint.split("/").pop();
  document.getElementById("model").textContent =
    `${info.algorithm}, up to ${info.ways} classes, ${info.inner_steps} adaptation steps · ${name}`;
  testPad = new Pad(document.getElementById("test-canvas"), info.pen_width);
  document.querySelector(".test .clear").addEventListener("click", () => testPad.clear());
  for (let i = 0; i < Math.min(3, info.ways); i++) addClass();
  document.getElementById("add-class").addEventListener("click", addClass);
  document.getElementById("remove-class").addEventListener("click", removeClass);
  document.getElementById("clear-all").addEventListener("click", () => {
    pads.forEach((pad) => pad.clear());
    testPad.clear();
    resetResults();
  });
  document.getElementById("classify").addEventListener("click", classify);
  document.body.dataset.state = "ready";
}

start();
