//! Backbones with torchvision's parameter names, so torchvision state dicts load unchanged.
//!
//! Each backbone is built as its *body* — the network up to its last feature map, without pooling —
//! and, for checking against torchvision, optionally with torchvision's own ImageNet classifier.

use tch::nn::{self, ModuleT};
use tch::Tensor;

pub use maskflow_contracts::model::Arch;

/// Building the networks an [`Arch`] names.
pub trait ArchNet {
    /// Builds the body under `p` (parameters named as torchvision names them).
    fn body(self, p: &nn::Path) -> nn::SequentialT;
    /// The whole torchvision ImageNet model (body + its own 1000-way classifier), for checking weights
    /// against torchvision's outputs.
    fn imagenet_model(self, p: &nn::Path) -> nn::SequentialT;
}

impl ArchNet for Arch {
    /// Builds the body under `p` (parameters named as torchvision names them).
    fn body(self, p: &nn::Path) -> nn::SequentialT {
        match self {
            Arch::MobilenetV2 => mobilenet_v2_features(&(p / "features")),
            Arch::Resnet18 => resnet_body(p, Block::Basic, [2, 2, 2, 2]),
            Arch::Resnet34 => resnet_body(p, Block::Basic, [3, 4, 6, 3]),
            Arch::Resnet50 => resnet_body(p, Block::Bottleneck, [3, 4, 6, 3]),
        }
    }

    fn imagenet_model(self, p: &nn::Path) -> nn::SequentialT {
        let body = self.body(p);
        let width = self.feature_width();
        match self {
            Arch::MobilenetV2 => {
                let fc = nn::linear(p / "classifier" / 1, width, 1000, Default::default());
                body.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
                    .add_fn_t(move |x, train| x.dropout(0.2, train).apply(&fc))
            }
            _ => {
                let fc = nn::linear(p / "fc", width, 1000, Default::default());
                body.add_fn(move |x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&fc))
            }
        }
    }
}


/// BatchNorm as torchvision initialises it: weight 1, bias 0 (tch's default weight init is U(0, 1)).
pub fn batch_norm2d(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, bn_config())
}

pub fn bn_config() -> nn::BatchNormConfig {
    nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), bs_init: nn::Init::Const(0.0), ..Default::default() }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: (k - 1) / 2, groups, bias: false, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// torchvision `Conv2dNormActivation`: conv (`.0`), BatchNorm (`.1`), ReLU6.
fn conv_bn_relu6(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::SequentialT {
    let c = conv(p / 0, cin, cout, k, stride, groups);
    let bn = batch_norm2d(p / 1, cout);
    // In place, as torchvision's ReLU6(inplace=True): the BatchNorm output is not needed by its backward.
    nn::seq_t().add(c).add(bn).add_fn(|x| x.shallow_clone().relu6_())
}

fn mobilenet_v2_features(p: &nn::Path) -> nn::SequentialT {
    // (expansion t, output channels c, repeats n, first stride s), torchvision's table.
    const SETTINGS: [(i64, i64, i64, i64); 7] =
        [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
    let mut seq = nn::seq_t().add(conv_bn_relu6(&(p / 0), 3, 32, 3, 2, 1));
    let mut cin = 32;
    let mut idx = 1;
    for (t, c, n, s) in SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            seq = seq.add(inverted_residual(&(p / idx), cin, c, stride, t));
            cin = c;
            idx += 1;
        }
    }
    seq.add(conv_bn_relu6(&(p / idx), cin, 1280, 1, 1, 1))
}

fn inverted_residual(p: &nn::Path, cin: i64, cout: i64, stride: i64, expand: i64) -> impl ModuleT {
    let q = p / "conv";
    let hidden = cin * expand;
    let mut layers = nn::seq_t();
    let mut j = 0;
    if expand != 1 {
        layers = layers.add(conv_bn_relu6(&(&q / j), cin, hidden, 1, 1, 1));
        j += 1;
    }
    layers = layers.add(conv_bn_relu6(&(&q / j), hidden, hidden, 3, stride, hidden));
    layers = layers.add(conv(&q / (j + 1), hidden, cout, 1, 1, 1)).add(batch_norm2d(&q / (j + 2), cout));
    let residual = stride == 1 && cin == cout;
    nn::func_t(move |x, train| {
        let y = x.apply_t(&layers, train);
        if residual {
            y + x
        } else {
            y
        }
    })
}

#[derive(Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

fn resnet_body(p: &nn::Path, block: Block, layers: [i64; 4]) -> nn::SequentialT {
    let conv1 =
        nn::conv2d(p / "conv1", 3, 64, 7, nn::ConvConfig { stride: 2, padding: 3, bias: false, ..Default::default() });
    let bn1 = batch_norm2d(p / "bn1", 64);
    let mut seq =
        nn::seq_t().add(conv1).add(bn1).add_fn(|x| x.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
    let expansion = match block {
        Block::Basic => 1,
        Block::Bottleneck => 4,
    };
    let mut cin = 64;
    for (i, (&n, planes)) in layers.iter().zip([64i64, 128, 256, 512]).enumerate() {
        let lp = p / format!("layer{}", i + 1);
        for b in 0..n {
            let stride = if i > 0 && b == 0 { 2 } else { 1 };
            seq = seq.add(resnet_block(&(&lp / b), block, cin, planes, stride));
            cin = planes * expansion;
        }
    }
    seq
}

fn resnet_block(p: &nn::Path, block: Block, cin: i64, planes: i64, stride: i64) -> impl ModuleT {
    let (main, cout) = match block {
        Block::Basic => {
            let s = nn::seq_t()
                .add(conv(p / "conv1", cin, planes, 3, stride, 1))
                .add(batch_norm2d(p / "bn1", planes))
                .add_fn(|x| x.shallow_clone().relu_())
                .add(conv(p / "conv2", planes, planes, 3, 1, 1))
                .add(batch_norm2d(p / "bn2", planes));
            (s, planes)
        }
        Block::Bottleneck => {
            let s = nn::seq_t()
                .add(conv(p / "conv1", cin, planes, 1, 1, 1))
                .add(batch_norm2d(p / "bn1", planes))
                .add_fn(|x| x.shallow_clone().relu_())
                .add(conv(p / "conv2", planes, planes, 3, stride, 1))
                .add(batch_norm2d(p / "bn2", planes))
                .add_fn(|x| x.shallow_clone().relu_())
                .add(conv(p / "conv3", planes, planes * 4, 1, 1, 1))
                .add(batch_norm2d(p / "bn3", planes * 4));
            (s, planes * 4)
        }
    };
    let downsample = (stride != 1 || cin != cout).then(|| {
        nn::seq_t()
            .add(conv(p / "downsample" / 0, cin, cout, 1, stride, 1))
            .add(batch_norm2d(p / "downsample" / 1, cout))
    });
    nn::func_t(move |x, train| {
        let y = x.apply_t(&main, train);
        let shortcut = match &downsample {
            Some(d) => x.apply_t(d, train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu_()
    })
}

/// Converts a batch of images (N, C, H, W) to channels-last strides — the layout oneDNN's convolutions
/// run fastest in on CPU — without changing its logical shape.
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}
