// The mixer of danna-sep's web app, run by Gradio's gr.HTML as its js_on_load: `element` is
// the component's root, `watch` calls back after the markup (mixer.py) has changed.
//
// Every stem is fetched from this server and decoded with the Web Audio API, and all of them
// are started on the same AudioContext clock, so they stay sample-aligned whatever is muted:
// one transport plays them all. Each stem goes through a gain (mute, solo, volume) and an
// analyser (its level meter) into the output.

function clock(seconds) {
  if (seconds < 60) return "0:" + seconds.toFixed(1).padStart(4, "0");
  const whole = Math.round(seconds);
  return Math.floor(whole / 60) + ":" + String(whole % 60).padStart(2, "0");
}

class Mixer {
  constructor(root) {
    this.root = root;
    this.closed = false;
    this.playing = false;
    this.offset = 0;     // where playback starts (or was paused), in seconds
    this.startedAt = 0;  // the AudioContext time at which the track's 0 s was (or would have been) played
    this.duration = 0;
    this.dragging = false;
    const rate = Number(root.dataset.rate) || undefined;
    this.context = new AudioContext(rate ? { sampleRate: rate } : {});
    this.output = this.context.createGain();
    this.output.connect(this.context.destination);
    this.samples = new Float32Array(2048);
    this.rows = [...root.querySelectorAll(".dm-stem")].map((el) => {
      const gain = this.context.createGain();
      const analyser = this.context.createAnalyser();
      analyser.fftSize = 2048;
      gain.connect(analyser);
      analyser.connect(this.output);
      return { el, stem: el.dataset.stem, url: el.dataset.url, muted: false, solo: false, volume: 1,
               buffer: null, source: null, gain, analyser };
    });
    this.load();
    this.tick = this.tick.bind(this);
    requestAnimationFrame(this.tick);
  }

  row(el) {
    const stem = el.closest(".dm-stem");
    return this.rows.find((r) => r.el === stem);
  }

  async load() {
    const note = this.root.querySelector(".dm-note");
    try {
      await Promise.all(this.rows.map(async (r) => {
        const response = await fetch(r.url);
        if (!response.ok) throw new Error(`${r.stem}: HTTP ${response.status}`);
        r.buffer = await this.context.decodeAudioData(await response.arrayBuffer());
        r.el.dataset.duration = r.buffer.duration.toFixed(6);
        r.el.querySelector(".dm-duration").textContent = clock(r.buffer.duration);
        this.draw(r);
      }));
    } catch (error) {
      if (this.closed) return;
      this.root.dataset.state = "error";
      note.textContent = "The players could not load: " + error.message;
      return;
    }
    if (this.closed) return;
    this.duration = Math.max(...this.rows.map((r) => r.buffer.duration));
    this.root.dataset.duration = this.duration.toFixed(6);
    note.textContent = "All stems play together from this one transport: mute (M), solo (S) and set the volume of " +
      "each; click a waveform to play from there.";
    for (const button of this.root.querySelectorAll(".dm-play, .dm-stop")) button.disabled = false;
    this.root.dataset.state = "ready";
  }

  draw(r) {
    // The waveform: the min and max of the channels' mean over each column of pixels.
    const canvas = r.el.querySelector(".dm-wave canvas");
    const scale = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.floor(canvas.clientWidth * scale));
    const height = Math.max(1, Math.floor(canvas.clientHeight * scale));
    canvas.width = width;
    canvas.height = height;
    const paint = canvas.getContext("2d");
    paint.clearRect(0, 0, width, height);
    paint.fillStyle = getComputedStyle(r.el).getPropertyValue("--dm-colour") || "#888";
    const channels = [];
    for (let c = 0; c < r.buffer.numberOfChannels; c++) channels.push(r.buffer.getChannelData(c));
    const length = r.buffer.length;
    for (let x = 0; x < width; x++) {
      const start = Math.floor(x * length / width);
      const end = Math.max(start + 1, Math.floor((x + 1) * length / width));
      let low = 0, high = 0;
      for (let i = start; i < end; i++) {
        let value = 0;
        for (const data of channels) value += data[i];
        value /= channels.length;
        if (value < low) low = value;
        if (value > high) high = value;
      }
      const top = (1 - Math.min(1, high)) * height / 2;
      const bottom = (1 - Math.max(-1, low)) * height / 2;
      paint.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  }

  position() {
    if (!this.playing) return this.offset;
    return Math.min(this.duration, Math.max(0, this.context.currentTime - this.startedAt));
  }

  play() {
    if (this.root.dataset.state !== "ready" || this.playing) return;
    this.context.resume();
    if (this.offset >= this.duration) this.offset = 0;
    const when = this.context.currentTime + 0.05;  // the same start for every stem
    for (const r of this.rows) {
      r.source = this.context.createBufferSource();
      r.source.buffer = r.buffer;
      r.source.connect(r.gain);
      r.source.start(when, this.offset);
    }
    this.startedAt = when - this.offset;
    this.playing = true;
    this.root.querySelector(".dm-play").textContent = "❚❚ Pause";
    this.root.dataset.playing = "true";
  }

  halt() {
    for (const r of this.rows) {
      if (r.source) {
        r.source.stop();
        r.source.disconnect();
        r.source = null;
      }
    }
    this.playing = false;
    this.root.querySelector(".dm-play").textContent = "▶ Play";
    this.root.dataset.playing = "false";
  }

  pause() {
    this.offset = this.position();
    this.halt();
  }

  stop() {
    this.halt();
    this.offset = 0;
  }

  seek(seconds) {
    const playing = this.playing;
    if (playing) this.halt();
    this.offset = Math.min(this.duration, Math.max(0, seconds));
    if (playing) this.play();
  }

  mix() {
    const solo = this.rows.some((r) => r.solo);
    for (const r of this.rows) {
      const level = r.muted || (solo && !r.solo) ? 0 : r.volume;
      r.gain.gain.setTargetAtTime(level, this.context.currentTime, 0.01);  // no click
      r.el.classList.toggle("dm-silent", level === 0);
      r.el.querySelector(".dm-mute").setAttribute("aria-pressed", String(r.muted));
      r.el.querySelector(".dm-solo").setAttribute("aria-pressed", String(r.solo));
    }
  }

  tick() {
    if (this.closed) return;
    let now = this.position();
    if (this.playing && now >= this.duration) {
      this.stop();
      now = 0;
    }
    this.root.dataset.position = now.toFixed(3);
    this.root.querySelector(".dm-time").textContent = clock(now) + " / " + clock(this.duration);
    if (!this.dragging && this.duration) this.root.querySelector(".dm-seek").value = String(Math.round(1000 * now / this.duration));
    const where = this.duration ? (100 * now / this.duration) + "%" : "0";
    for (const r of this.rows) {
      r.el.querySelector(".dm-playhead").style.left = where;
      r.analyser.getFloatTimeDomainData(this.samples);
      let sum = 0;
      for (const x of this.samples) sum += x * x;
      const rms = this.playing ? Math.sqrt(sum / this.samples.length) : 0;
      const meter = r.el.querySelector(".dm-meter");
      meter.dataset.level = rms.toExponential(3);
      const fill = Math.min(1, Math.max(0, (20 * Math.log10(rms + 1e-9) + 60) / 60));
      meter.firstElementChild.style.width = (100 * fill).toFixed(1) + "%";
    }
    requestAnimationFrame(this.tick);
  }

  close() {
    this.closed = true;
    if (this.playing) this.halt();
    this.context.close();
  }
}

let mixer = null;

function setUp() {
  if (mixer) mixer.close();
  mixer = null;
  const root = element.querySelector(".dm-mixer");
  if (root) mixer = new Mixer(root);
}

// One set of listeners on the component's root, for whatever mixer it holds now.
element.addEventListener("click", (event) => {
  if (!mixer) return;
  const target = event.target;
  if (target.closest(".dm-play")) mixer.playing ? mixer.pause() : mixer.play();
  else if (target.closest(".dm-stop")) mixer.stop();
  else if (target.closest(".dm-mute")) { const r = mixer.row(target); r.muted = !r.muted; mixer.mix(); }
  else if (target.closest(".dm-solo")) { const r = mixer.row(target); r.solo = !r.solo; mixer.mix(); }
  else if (target.closest(".dm-wave")) {
    const box = target.closest(".dm-wave").getBoundingClientRect();
    mixer.seek(mixer.duration * (event.clientX - box.left) / box.width);
  }
});
element.addEventListener("input", (event) => {
  if (!mixer) return;
  const target = event.target;
  if (target.matches(".dm-volume")) { mixer.row(target).volume = Number(target.value); mixer.mix(); }
  else if (target.matches(".dm-seek")) { mixer.dragging = true; }
});
element.addEventListener("change", (event) => {
  if (!mixer || !event.target.matches(".dm-seek")) return;
  mixer.dragging = false;
  mixer.seek(mixer.duration * Number(event.target.value) / 1000);
});
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => { if (mixer) for (const r of mixer.rows) if (r.buffer) mixer.draw(r); }, 200);
});

watch("value", setUp);
setUp();
