/**
 * Networks built from ops and kernels — the public API of `@he2gene/he2gene/model`: the ResNet backbones,
 * the HE2Gene network and its checkpoints' layout, training, metrics, and the image encoders (torchvision
 * ResNets, an HE2Gene backbone, timm ViTs). Internals (the folded-inference parameters, initialisers, layout
 * records) stay in their files. Imports `engine/`, `kernels/` and `ops/` only.
 *
 * @module
 */
export {
  BACKBONES,
  featureDim,
  parameterShapes,
  RESNET18,
  RESNET50,
  type ResNetConfig,
  resnetForward,
  TINY,
} from "./resnet.ts";
export {
  checkStateDict,
  expectedShapes,
  HE2Gene,
  type HE2GeneConfig,
  type HE2GeneOutput,
  HEAD_KEYS,
  type HostTensor,
  inferConfig,
  initHeads,
  type Variant,
} from "./he2gene.ts";
export {
  columnMeans,
  type MeanBaseline,
  meanExpressionBaseline,
  msePerGene,
  type NonFiniteCells,
  nonFiniteCells,
  pearsonPerGene,
  type PearsonSummary,
  rocAuc,
  type SubsetSummary,
  summarize,
  type SummarizeOptions,
} from "./metrics.ts";
export {
  DEFAULT_TRAIN,
  predictEval,
  type StepLosses,
  type TrainableModel,
  type TrainBatch,
  type TrainConfig,
  Trainer,
} from "./train.ts";
export { ENCODER_PREFIX, type FineTuneConfig, FineTunedEncoder, type FineTuneOptions } from "./finetune.ts";
export {
  type Encoder,
  HE2GENE_NORM,
  IMAGENET_MEAN,
  IMAGENET_STD,
  inferResNetConfig,
  ResNetEncoder,
  type TorchvisionResNet,
  torchvisionResNet,
  type TrainableEncoder,
} from "./encoder.ts";
export { type ViTConfig, vitConfig, ViTEncoder, type ViTPreprocess } from "./vit.ts";
export { fitRidge, type RidgeFit, type RidgeOptions } from "./ridge.ts";
export {
  EncoderHeads,
  type EncoderHeadsConfig,
  HEAD_KINDS,
  type HeadKind,
  headShapes,
  type PredictModel,
} from "./encoder_heads.ts";
