"""Every piece of text the program shows in English and in Chinese, side by side.

One module, so that the two languages say the same thing and a translator edits one file:
metric labels (the column headers of every table, keyed by the metric names of
:data:`mri2mri.metrics.METRICS`), the caption under the metric tables, the figure labels, the
HTML report's headings and notes, and the headers and notes of ``mri2mri compare``. Templates
are ``str.format`` strings; placeholders are named in each group's comment. No other module of
the package holds Chinese text.
"""

from __future__ import annotations

from mri2mri.errors import ConfigError

LANGS = ("en", "zh")


def check_lang(lang: str) -> str:
    """Return ``lang`` if it is a supported language, else raise ConfigError."""
    if lang not in LANGS:
        raise ConfigError(f"unknown language {lang!r}; valid languages: {', '.join(LANGS)}")
    return lang


# ---------------------------------------------------------------------------------------------
# Metrics: one label per metric of mri2mri.metrics.METRICS (and the volume metrics), used as the
# column header of the Markdown and HTML tables and, for PSNR and SSIM, on validation curves.

METRIC_LABELS: dict[str, dict[str, str]] = {
    "en": {"psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE", "nmse": "NMSE",
           "psnr_mask": "PSNR in mask (dB)", "ssim_mask": "SSIM in mask", "mae_mask": "MAE in mask",
           "nmse_mask": "NMSE in mask", "psnr_mask_window": "PSNR in mask, windowed (dB)",
           "ssim_mask_window": "SSIM in mask, windowed", "volume_psnr": "3D PSNR in mask (dB)",
           "histogram_w1": "Brain histogram W1"},
    "zh": {"psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE", "nmse": "NMSE",
           "psnr_mask": "掩膜内 PSNR (dB)", "ssim_mask": "掩膜内 SSIM", "mae_mask": "掩膜内 MAE",
           "nmse_mask": "掩膜内 NMSE", "psnr_mask_window": "掩膜内开窗 PSNR (dB)",
           "ssim_mask_window": "掩膜内开窗 SSIM", "volume_psnr": "掩膜内三维 PSNR (dB)",
           "histogram_w1": "脑内直方图 W1 距离"},
}  # fmt: skip
METHOD_HEADER = {"en": "Method", "zh": "方法"}

# The caption under every table of test metrics: {split}, {n_subjects}, {n_slices}, {source},
# {target}.
CAPTIONS = {
    "en": (
        "{split} split: {n_subjects} subjects, {n_slices} slices; intensities scaled to [0, 1]. "
        "Whole-image PSNR/SSIM/MAE/NMSE compare the prediction multiplied by the brain mask with "
        "the target (whose background is zero after skull stripping; a generator's is not). "
        "In-mask values use brain voxels only; masked SSIM is the mean of the SSIM map "
        "(Gaussian window 11, sigma 1.5) over the mask. Windowed values score each image after "
        "mapping its own 0.5th-99.5th percentiles of the subject's brain voxels to [0, 1]. "
        "Mean ± std over slices. Baselines: "
        "identity (the {source} input itself) and intensity-map (mean {target} intensity per "
        "{source} intensity bin, fitted on the training split)."
    ),
    "zh": (
        "{split} 集：{n_subjects} 个受试者，{n_slices} 张切片；强度缩放到 [0, 1]。"
        "整幅图像的 PSNR/SSIM/MAE/NMSE 以乘以脑掩膜后的预测图像与目标图像比较"
        "（去颅骨后目标背景为零，生成器输出则不然）。掩膜内指标只使用脑体素；"
        "掩膜 SSIM 为 SSIM 图（高斯窗 11，sigma 1.5）在掩膜内的均值。"
        "开窗指标先将每幅图像按其自身在该受试者脑体素中的第 0.5 至 99.5 百分位数映射到 [0, 1] 再评分。"
        "数值为切片上的均值 ± 标准差。"
        "基线：identity（直接使用输入 {source}）与 intensity-map"
        "（按 {source} 强度分箱的 {target} 平均强度，在训练集上拟合）。"
    ),
}
# The evaluation's warning when the model loses to the baseline: {model}, {model_psnr},
# {baseline_psnr}.
NOT_BETTER = {
    "en": "{model} does not beat the intensity-map baseline on masked PSNR ({model_psnr:.2f} dB vs {baseline_psnr:.2f} dB)",
    "zh": "{model} 的掩膜 PSNR 未超过 intensity-map 基线（{model_psnr:.2f} dB 对 {baseline_psnr:.2f} dB）",
}
# The title of a test figure: {subject}, {slice_index}.
SLICE_TITLE = {"en": "{subject}, slice {slice_index}", "zh": "{subject}，切片 {slice_index}"}

# ---------------------------------------------------------------------------------------------
# Figures. Placeholders: {source} / {target} are contrast names (T1, T2, FLAIR, ...).

FIGURE_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "loss_G": "Generator loss (Loss_G)",
        "loss_D": "Discriminator loss (Loss_D)",
        "loss_L1": "L1 loss (Loss_L1)",
        "loss": "Loss",
        "epoch": "Epoch",
        "training_losses": "Training losses",
        "validation_metrics": "Validation metrics",
        "val_L1": "Validation L1",
        "val_PSNR": f"Validation {METRIC_LABELS['en']['psnr']}",
        "val_SSIM": f"Validation {METRIC_LABELS['en']['ssim']}",
        "input": "Input {source}",
        "generated": "Generated {target}",
        "real": "Real {target}",
        "abs_error": "Absolute error",
        "abs_error_mae": "Absolute error (MAE {mae:.3f})",
        "uncertainty": "Uncertainty (std of {passes} passes)",
        "translation": "{source} → {target}",
        "comparison": "{source} → {target}: the same test slice from every run",
        "run": "Run",
    },
    "zh": {
        "loss_G": "生成器总损失 Loss_G",
        "loss_D": "判别器损失 Loss_D",
        "loss_L1": "L1 损失 Loss_L1",
        "loss": "损失",
        "epoch": "轮次 Epoch",
        "training_losses": "训练损失曲线",
        "validation_metrics": "验证集指标",
        "val_L1": "验证集 L1",
        "val_PSNR": f"验证集 {METRIC_LABELS['zh']['psnr']}",
        "val_SSIM": f"验证集 {METRIC_LABELS['zh']['ssim']}",
        "input": "输入 {source}",
        "generated": "生成 {target}",
        "real": "真实 {target}",
        "abs_error": "绝对误差",
        "abs_error_mae": "绝对误差 (MAE {mae:.3f})",
        "uncertainty": "不确定性（{passes} 次推理的标准差）",
        "translation": "{source} → {target}",
        "comparison": "{source} → {target}：各次运行在同一测试切片上的结果",
        "run": "运行",
    },
}
# Characters a usable Chinese font must have (taken from the labels above).
CJK_PROBE = "生成器判别损失输入真实绝对误差轮次"

# ---------------------------------------------------------------------------------------------
# The HTML reports. {file} is the name of a run-folder file; "viewer_slice" is filled in by the
# page's script, the others by mri2mri.report.

REPORT: dict[str, dict[str, str]] = {
    "en": {
        "run_report": "mri2mri run report",
        "comparison_report": "mri2mri run comparison",
        "configuration": "Run configuration",
        "training": "Training curves",
        "loss_curves": "Training losses",
        "validation_curves": "Validation metrics",
        "metrics": "Test metrics",
        "pooled": "Pooled test metrics (mean ± std)",
        "across_subjects": "Across subjects (mean ± std of the per-subject means)",
        "volume_psnr": "Volume PSNR (dB, over each subject's brain voxels)",
        "histogram_w1": "Brain-intensity histogram distance (1-Wasserstein, unit scale, per subject; "
                        "lower is better)",
        "per_subject": "Per subject",
        "protocol": "Evaluation protocol",
        "test_set": "Test set",
        "warnings": "Warnings",
        "subject": "Subject",
        "method": "Method",
        "verdict_yes": "The model beats the intensity-mapping baseline.",
        "verdict_no": "The model does NOT beat the intensity-mapping baseline.",
        "other_metrics": "Other entries of {file}",
        "examples": "Test examples",
        "other_figures": "Other figures",
        "summary": "Run summary",
        "key": "Key",
        "value": "Value",
        "missing": "{name} not found in this run folder.",
        "no_validation": "{file} holds no validation values.",
        "best": "Bold: best value of each metric.",
        "table": "Comparison table",
        "figure": "Comparison figure",
        "footer": "Written by mri2mri {version} on {date}.",
        "viewer": "Slice viewer",
        "viewer_help": "Every slice of each test subject: drag the slider or press ←/→ (↑/↓) after "
                       "clicking a viewer. Images are downscaled to {size} px and stored as 8-bit "
                       "JPEG; the error is |generated − real| in the brain, black to bright at 0 to {vmax}.",
        "viewer_slice": "slice {index} ({number}/{count})",
        "viewer_omitted": "Not in the viewer, to keep this page small: {subjects}.",
        "error_panel": "Absolute error",
    },
    "zh": {
        "run_report": "mri2mri 运行报告",
        "comparison_report": "mri2mri 运行对比",
        "configuration": "运行配置",
        "training": "训练曲线",
        "loss_curves": "训练损失",
        "validation_curves": "验证集指标",
        "metrics": "测试集指标",
        "pooled": "汇总测试指标（均值 ± 标准差）",
        "across_subjects": "受试者间（各受试者均值的均值 ± 标准差）",
        "volume_psnr": "体积 PSNR（dB，每名受试者的全部脑体素）",
        "histogram_w1": "脑内强度直方图距离（1-Wasserstein，[0, 1] 标度，按受试者；越低越好）",
        "per_subject": "按受试者",
        "protocol": "评估方案",
        "test_set": "测试集",
        "warnings": "警告",
        "subject": "受试者",
        "method": "方法",
        "verdict_yes": "模型优于强度映射基线。",
        "verdict_no": "模型未优于强度映射基线。",
        "other_metrics": "{file} 中的其他内容",
        "examples": "测试集示例",
        "other_figures": "其他图像",
        "summary": "运行摘要",
        "key": "项目",
        "value": "值",
        "missing": "本运行目录中没有 {name}。",
        "no_validation": "{file} 中没有验证集数值。",
        "best": "粗体：各指标的最佳值。",
        "table": "对比表",
        "figure": "对比图",
        "footer": "由 mri2mri {version} 于 {date} 生成。",
        "viewer": "切片浏览器",
        "viewer_help": "每名测试受试者的全部切片：拖动滑块，或点击浏览器后按 ←/→（↑/↓）翻页。"
                       "图像缩小到 {size} 像素并以 8 位 JPEG 保存；误差为脑内 |生成 − 真实|，"
                       "由黑到亮对应 0 到 {vmax}。",
        "viewer_slice": "切片 {index}（{number}/{count}）",
        "viewer_omitted": "为控制页面大小，以下受试者未放入浏览器：{subjects}。",
        "error_panel": "绝对误差",
    },
}

# ---------------------------------------------------------------------------------------------
# mri2mri compare: the run's own columns (the metric columns are METRIC_LABELS) and the notes
# under the table ({run} a run's label; {summary} and {history} run-folder file names).

COMPARE_HEADERS: dict[str, dict[str, str]] = {
    "en": {
        "run": "Run", "generator": "Generator", "discriminator": "Discriminator",
        "gan_loss": "GAN loss", "epochs": "Epochs", "parameters": "Parameters G / D",
        "train_time": "Training time", "images_per_s": "Images/s",
    },
    "zh": {
        "run": "运行", "generator": "生成器", "discriminator": "判别器", "gan_loss": "GAN 损失",
        "epochs": "轮次", "parameters": "参数量 G / D", "train_time": "训练时间", "images_per_s": "图像/秒",
    },
}
COMPARE_NOTES: dict[str, dict[str, str]] = {
    "en": {
        "baseline_row": "Last row: the intensity-map baseline (no training, no parameters).",
        "not_better": "Warning: {run} does not beat the intensity-map baseline on masked PSNR.",
        "no_summary": "{run}: no {summary}; epochs, time and speed taken from {history}.",
    },
    "zh": {
        "baseline_row": "最后一行：intensity-map 基线（无需训练，无参数）。",
        "not_better": "警告：{run} 的掩膜 PSNR 未超过 intensity-map 基线。",
        "no_summary": "{run}：缺少 {summary}；轮次、时间与速度取自 {history}。",
    },
}
