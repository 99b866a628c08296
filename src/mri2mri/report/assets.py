"""What every report page carries inline: its style sheet and the slice viewer's script.

Kept as Python strings (not package data files) so that an installed package always has them.
"""

STYLE = """
/* The embedded CJK subset comes first: it holds only the page's CJK glyphs, so Latin text
   falls through to the system fonts, and Chromium then never picks a tofu-only fallback. */
body { font-family: "mri2mri CJK", system-ui, -apple-system, "Segoe UI", "Noto Sans",
       "Noto Sans CJK SC", "Microsoft YaHei", "PingFang SC", sans-serif;
       margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { color: #555; font-size: .9rem; }
.note { color: #666; font-style: italic; }
.good { color: #126b12; font-weight: 600; }
.bad { color: #a11; font-weight: 600; }
.config { display: flex; flex-wrap: wrap; gap: 1.5rem; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
footer { margin-top: 3rem; color: #888; font-size: .85rem; }
.viewer { margin: 1rem 0 1.6rem; padding: .6rem; border: 1px solid #ddd; }
.viewer:focus { outline: 2px solid #4a7ebb; }
.viewer .panels { display: flex; flex-wrap: wrap; gap: .6rem; }
.viewer figure { margin: 0; }
.viewer canvas { width: 192px; height: auto; image-rendering: pixelated; background: #000; }
.viewer input[type=range] { width: min(100%, 800px); }
.viewer .slice-metrics { font-variant-numeric: tabular-nums; }
"""

# The slice viewer: draws slice k of each sprite sheet into its canvas. ?slice=K in the page's
# address opens every viewer at slice K (for links, and for testing the page in a browser).
VIEWER_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('viewer-data').textContent);
  const start = new URLSearchParams(window.location.search).get('slice');
  let active = null;
  document.querySelectorAll('.viewer').forEach(function (root) {
    const subject = data.subjects[Number(root.dataset.index)];
    const slider = root.querySelector('input[type=range]');
    const canvases = Array.from(root.querySelectorAll('canvas'));
    const label = root.querySelector('.slice-metrics');
    const [height, width] = data.size;
    const sheets = data.panels.map(function (panel) {
      const image = new Image();
      image.src = subject.sprites[panel];
      return image;
    });
    function format(name, value) {
      if (value === null || value === undefined) { return name + ' n/a'; }
      return name + ' ' + value.toFixed(name.startsWith('psnr') ? 2 : 4);
    }
    function draw() {
      const k = Number(slider.value);
      canvases.forEach(function (canvas, i) {
        const context = canvas.getContext('2d');
        context.clearRect(0, 0, width, height);
        context.drawImage(sheets[i], 0, k * height, width, height, 0, 0, width, height);
      });
      const metrics = data.metric_names.map(function (name) { return format(name, subject.metrics[name][k]); });
      label.textContent = root.dataset.sliceText.replace('{index}', subject.slices[k])
        .replace('{number}', k + 1).replace('{count}', subject.slices.length) + ': ' + metrics.join(', ');
      root.dataset.slice = String(k);
    }
    function step(delta) {
      slider.value = String(Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta)));
      draw();
    }
    root.mri2mriStep = step;
    slider.addEventListener('input', draw);
    root.addEventListener('focusin', function () { active = root; });
    root.addEventListener('pointerdown', function () { active = root; });
    Promise.all(sheets.map(function (image) { return image.decode(); })).then(function () {
      if (start !== null && !Number.isNaN(Number(start))) {
        slider.value = String(Math.min(Number(slider.max), Math.max(0, Math.round(Number(start)))));
      }
      draw();
      root.dataset.ready = '1';
    });
  });
  document.addEventListener('keydown', function (event) {
    const root = active || document.querySelector('.viewer');
    // A focused slider moves by itself on arrow keys; do not move it twice.
    const onSlider = event.target instanceof Element && event.target.matches('input[type=range]');
    if (!root || !root.mri2mriStep || onSlider) { return; }
    const delta = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[event.key];
    if (delta) { root.mri2mriStep(delta); event.preventDefault(); }
  });
})();
"""
