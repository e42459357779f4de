"""The posts kexue covers: one entry per spec slug (title, Chinese title, post URL, date).

``kexue list`` shows every entry, implemented or not; a reproduction module's ``CLAIM`` must agree
with its entry here (tests check it).
"""

from __future__ import annotations

from typing import NamedTuple


class Post(NamedTuple):
    slug: str
    title: str
    title_zh: str
    url: str
    date: str


POSTS: tuple[Post, ...] = (
    Post(
        "adam-epsilon-scaling",
        "Optimal learning rate vs batch size for SGD, SignSGD and Adam with ε",
        "Adam的epsilon如何影响学习率的Scaling Law？ + 当Batch Size增大时，学习率该如何随之变化？",
        "https://kexue.fm/archives/10563",
        "2024-11-18",
    ),
    Post(
        "adam-hessian",
        "Adaptive learning-rate optimizers seen as Hessian approximations",
        "从Hessian近似看自适应学习率优化器",
        "https://kexue.fm/archives/10588",
        "2024-11-29",
    ),
    Post(
        "attention-scale",
        "Attention scale from gradient maximisation",
        "从梯度最大化看Attention的Scale操作",
        "https://kexue.fm/archives/9812",
        "2023-10-22",
    ),
    Post(
        "bytepiece",
        "BytePiece: a purer, higher-compression tokenizer",
        "BytePiece：更纯粹、更高压缩率的Tokenizer",
        "https://kexue.fm/archives/9752",
        "2023-09-07",
    ),
    Post(
        "emo-loss",
        "EMO: a classification loss built on optimal transport",
        "EMO:基于最优传输思想设计的分类损失函数",
        "https://kexue.fm/archives/9797",
        "2023-10-13",
    ),
    Post(
        "fsq",
        'Embarrassingly simple FSQ: "rounding" beats VQ-VAE',
        "简单得令人尴尬的FSQ：“四舍五入”超越了VQ-VAE",
        "https://kexue.fm/archives/9826",
        "2023-10-31",
    ),
    Post(
        "gan-as-diffusion-ode",
        "GAN as a diffusion ODE in training time: MonoFlow",
        "生成扩散模型漫谈(十九):作为扩散ODE的GAN",
        "https://kexue.fm/archives/9662",
        "2023-06-24",
    ),
    Post(
        "gan-qp",
        "GAN-QP: a GAN with neither a Lipschitz constraint nor vanishing gradients",
        "不用L约束又不会梯度消失的GAN,了解一下?",
        "https://kexue.fm/archives/6163",
        "2018-11-20",
    ),
    Post(
        "gradient-flow",
        "Gradient flow: the path to a minimum, and Wasserstein gradient flows",
        "梯度流:探索通向最小值之路",
        "https://kexue.fm/archives/9660",
        "2023-06-16",
    ),
    Post(
        "gradient-normalization",
        "WGAN via gradient normalisation: GN-GAN and GraN-GAN",
        "WGAN新方案:通过梯度归一化来实现L约束",
        "https://kexue.fm/archives/8757",
        "2021-11-15",
    ),
    Post(
        "hwfa",
        "Hybrid Window-Full Attention (HWFA) and HWFA + ReRoPE",
        "Transformer升级之路：9、一种全局长度外推的新思路 / 14、当HWFA遇见ReRoPE",
        "https://kexue.fm/archives/9603",
        "2023-05-12",
    ),
    Post(
        "keynorm",
        "Key normalisation helps length extrapolation",
        "Transformer升级之路：15、Key归一化助力长度外推",
        "https://kexue.fm/archives/9859",
        "2023-11-20",
    ),
    Post(
        "lora-ga-pro",
        "Aligning LoRA with full fine-tuning: LoRA-GA initialisation and LoRA-Pro gradient adjustment",
        "对齐全量微调！这是我看过最精彩的LoRA改进（一）/（二）",
        "https://kexue.fm/archives/10226",
        "2024-07-12",
    ),
    Post(
        "lora-optimizer",
        "LoRA from the gradient's point of view: LoRA as an optimizer, random projections",
        "梯度视角下的LoRA：简介、分析、猜测及推广",
        "https://kexue.fm/archives/9590",
        "2023-04-17",
    ),
    Post(
        "mad-self-consuming",
        'Self-consuming generative models go MAD: "mad cow disease" for the internet',
        '当生成模型肆虐:互联网将有"疯牛病"之忧?',
        "https://kexue.fm/archives/9687",
        "2023-07-14",
    ),
    Post(
        "mixed-precision",
        "Mixed precision and graph compilation lessons, translated to PyTorch",
        "在bert4keras中使用混合精度和XLA加速训练",
        "https://kexue.fm/archives/9059",
        "2022-04-28",
    ),
    Post(
        "mla",
        "KV-cache versus quality: from MHA, MQA, GQA to MLA",
        "缓存与效果的极限拉扯：从MHA、MQA、GQA到MLA",
        "https://kexue.fm/archives/10091",
        "2024-05-13",
    ),
    Post(
        "momentum-accumulation",
        "Gradient accumulation hidden in momentum: fewer updates, better results?",
        "隐藏在动量中的梯度累积：少更新几步，效果反而更好？",
        "https://kexue.fm/archives/8634",
        "2021-08-24",
    ),
    Post(
        "pre-post-norm",
        "Why Pre Norm underperforms Post Norm",
        "为什么Pre Norm的效果不如Post Norm？",
        "https://kexue.fm/archives/9009",
        "2022-03-29",
    ),
    Post(
        "probability-space-optimization",
        "The road to an optimal distribution: minimisation over probability space",
        "通向最优分布之路:概率空间的最小化",
        "https://kexue.fm/archives/10289",
        "2024-08-06",
    ),
    Post(
        "reflow-wgan-gp",
        "From ReFlow (rectified flow) to WGAN-GP",
        "生成扩散模型漫谈(二十):从ReFlow到WGAN-GP",
        "https://kexue.fm/archives/9668",
        "2023-06-28",
    ),
    Post(
        "rerope",
        "ReRoPE, Leaky ReRoPE and their inverse use",
        "Transformer升级之路：12、无限外推的ReRoPE？ / 13、逆用Leaky ReRoPE",
        "https://kexue.fm/archives/9708",
        "2023-08-07",
    ),
    Post(
        "retry",
        "Elegant retries in Python: an iterator that is also a context manager",
        "旁门左道之如何让Python的重试代码更加优雅",
        "https://kexue.fm/archives/9938",
        "2024-01-14",
    ),
    Post(
        "rope-beta-base",
        "RoPE is a base-beta encoding: NTK-aware scaling, mixed bases, interpolation",
        "Transformer升级之路：10、RoPE是一种β进制编码",
        "https://kexue.fm/archives/9675",
        "2023-07-06",
    ),
    Post(
        "scaling-law-quanta",
        "Scaling laws from the quantization hypothesis",
        "基于量子化假设推导模型的尺度定律(Scaling Law)",
        "https://kexue.fm/archives/9607",
        "2023-05-18",
    ),
    Post(
        "shared-embedding",
        "Revisiting tied input/output embeddings in language models",
        "语言模型输出端共享Embedding的重新探索",
        "https://kexue.fm/archives/9698",
        "2023-07-20",
    ),
    Post(
        "simsiam-dynamics",
        "Optimisation algorithms from a dynamics viewpoint (VI): why SimSiam does not collapse",
        "从动力学角度看优化算法(六):为什么SimSiam不退化?",
        "https://kexue.fm/archives/7980",
        "2020-12-11",
    ),
    Post(
        "simvq",
        "Another VQ trick: put a linear transform on the codebook",
        "VQ的又一技巧：给编码表加一个线性变换",
        "https://kexue.fm/archives/10519",
        "2024-11-06",
    ),
    Post(
        "ssm-rtf",
        "Revisiting SSMs (IV): the rational generating-function view — RTF, state-free SSM kernels",
        "重温SSM(四):有理生成函数的新视角",
        "https://kexue.fm/archives/10180",
        "2024-06-27",
    ),
    Post(
        "tiger-embedding",
        "Tiger optimizer and the embedding anomaly under Lion/Tiger",
        "Lion/Tiger优化器训练下的Embedding异常和对策",
        "https://kexue.fm/archives/9736",
        "2023-08-28",
    ),
    Post(
        "tvd-loss",
        "A simple remedy for cross-entropy overconfidence: the TaiLr / TVD-style loss",
        "缓解交叉熵过度自信的一个简明方案",
        "https://kexue.fm/archives/9526",
        "2023-03-14",
    ),
    Post(
        "viterbi-sampling",
        'Random tokenization: from Viterbi decoding to Viterbi sampling, and on to exact ("perfect") sampling',
        "随机分词浅探：从Viterbi Decoding到Viterbi Sampling / 随机分词再探：从Viterbi Sampling到完美采样算法",
        "https://kexue.fm/archives/9811",
        "2023-10-16",
    ),
    Post(
        "vq-rotation-trick",
        "The rotation trick for VQ: a generalisation of the straight-through estimator",
        "VQ的旋转技巧：梯度直通估计的一般推广",
        "https://kexue.fm/archives/10489",
        "2024-10-24",
    ),
)

BY_SLUG: dict[str, Post] = {p.slug: p for p in POSTS}
