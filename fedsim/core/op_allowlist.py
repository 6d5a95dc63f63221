"""The ops a deserialized TensorFlow graph may use: a documented, extendable allowlist.

A computation read from bytes (an S3 object, a file) is untrusted until every node of its graph
and of the graph's function library has been checked here. The default allowlist holds what
fedsim's algorithms, aggregators and Keras layers need: pure tensor arithmetic and the state
a computation creates for itself. It leaves out, on purpose, everything that reaches outside the
graph's own memory:

- the file system: ReadFile, WriteFile, MatchingFiles, Save/Restore, readers, record and SQL
  datasets, dataset caches and snapshots, ImmutableConst (a memory-mapped file), tables
  initialized from files, PrintV2 (its output stream may be a file), summaries;
- Python: PyFunc, PyFuncStateless, EagerPyFunc;
- the network and other processes: RemoteCall, Send/Recv, collectives, data-service datasets;
- graphs that build graphs at run time (DatasetFromGraph) and Abort.

Variables must be anonymous (each run creates its own), so a graph cannot reach a variable that
another computation in the same process holds.

Families (the names are the keys of `DEFAULT_OP_ALLOWLIST.families`):

- graph: inputs, constants, identities, gradient stops;
- math: element-wise and reduction arithmetic, comparisons, casts, matrix products, FFTs;
- nn: activations, convolutions, pooling, normalization, losses, top-k, CTC;
- array: shapes, reshapes, slicing, gathers and scatters, concatenation, padding;
- linalg: decompositions and solvers;
- random: stateless and seeded random numbers, shuffles, candidate sampling;
- control_flow: conditionals, loops, function calls into the graph's own library, Assert;
- variables: anonymous resource variables, their reads, updates and optimizer apply-ops;
- strings, sparse, tables (in-memory hash tables), lists (TensorList, TensorArray),
  parsing (tf.Example, CSV text, raw bytes), image (decoding, resizing, colour);
- datasets: in-memory tf.data transformations over the data the runtime passes in (batch, map,
  shuffle, take, window, zip, ...) and their iterators.

Example::

    from fedsim.core import op_allowlist
    # A computation that reads TFF's SQLite files on a trusted machine:
    allowed = op_allowlist.DEFAULT_OP_ALLOWLIST.extended("sqlite_reading", ["SqlDataset"])
    computation = fedsim.deserialize_computation(data, allowed_ops=allowed)
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs
import tensorflow as tf

from fedsim.core.errors import SerializationError

__all__ = ["OpAllowlist", "DEFAULT_OP_ALLOWLIST", "DisallowedOpError", "check_graph", "graph_ops", "ANONYMOUS_SHARED_NAME"]

# A VarHandleOp with this shared name creates a new variable every time it runs
# (TensorFlow's ResourceHandle::ANONYMOUS_NAME, used by eager variables).
ANONYMOUS_SHARED_NAME = b"cd2c89b7-88b7-44c8-ad83-06c2a9158347"


class DisallowedOpError(SerializationError):
    """A graph uses an op outside the allowlist; the message names the op, node and computation."""


def _frozen_families(families: Mapping[str, Iterable[str]]) -> Mapping[str, frozenset]:
    return {name: frozenset(ops.split() if isinstance(ops, str) else ops) for name, ops in families.items()}


@attrs.frozen
class OpAllowlist:
    """Named families of TensorFlow op names that deserialized graphs may use.

    A value: `extended` and `without` return new allowlists, so the default cannot be changed
    by accident from another module.
    """

    families: Mapping[str, frozenset] = attrs.field(converter=_frozen_families)

    @property
    def ops(self) -> frozenset:
        return frozenset().union(*self.families.values())

    def allows(self, op: str) -> bool:
        return any(op in ops for ops in self.families.values())

    def family_of(self, op: str) -> str:
        return next((name for name, ops in self.families.items() if op in ops), "")

    def extended(self, family: str, ops: Iterable[str]) -> "OpAllowlist":
        """A copy that also allows `ops`, listed under `family` (say why in its name)."""
        ops = frozenset([ops] if isinstance(ops, str) else ops)
        families = dict(self.families)
        families[family] = families.get(family, frozenset()) | ops
        return OpAllowlist(families)

    def without(self, *ops: str) -> "OpAllowlist":
        """A copy that no longer allows `ops` (for example a silo refusing all datasets)."""
        return OpAllowlist({name: members - set(ops) for name, members in self.families.items()})


_DEFAULT_FAMILIES = {
    "graph": """
        Const Identity IdentityN NoOp Placeholder PlaceholderWithDefault StopGradient PreventGradient
        _Arg _Retval
    """,
    "math": """
        Abs AccumulateNV2 Acos Acosh Add AddN AddV2 All Angle Any ApproximateEqual ArgMax ArgMin Asin
        Asinh Atan Atan2 Atanh BatchFFT BatchFFT2D BatchFFT3D BatchIFFT BatchIFFT2D BatchIFFT3D
        BatchMatMul BatchMatMulV2 BatchMatMulV3 BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1
        BesselK0 BesselK0e BesselK1 BesselK1e BesselY0 BesselY1 Betainc Bincount BitwiseAnd BitwiseOr
        BitwiseXor Bucketize Cast Ceil ClipByValue Complex ComplexAbs Conj Cos Cosh Cross Cumprod Cumsum
        CumulativeLogsumexp Dawsn DenseBincount Digamma Div DivNoNan Equal Erf Erfc Erfinv EuclideanNorm
        Exp Expint Expm1 FFT FFT2D FFT3D FFTND Floor FloorDiv FloorMod FresnelCos FresnelSin Greater
        GreaterEqual HistogramFixedWidth IFFT IFFT2D IFFT3D IFFTND IRFFT IRFFT2D IRFFT3D IRFFTND Igamma
        IgammaGradA Igammac Imag Inv InvGrad Invert IsFinite IsInf IsNan LeftShift Less LessEqual Lgamma
        LinSpace Log Log1p LogicalAnd LogicalNot LogicalOr MatMul Max Maximum Mean Min Minimum Mod Mul
        MulNoNan Ndtri Neg NextAfter NotEqual Polygamma PopulationCount Pow Prod
        QuantizeDownAndShrinkRange QuantizedAdd QuantizedMatMul QuantizedMul RFFT RFFT2D RFFT3D RFFTND
        RaggedBincount Range Real RealDiv Reciprocal ReciprocalGrad RequantizationRange
        RequantizationRangePerChannel Requantize RequantizePerChannel RightShift Rint Round Rsqrt
        RsqrtGrad SegmentMax SegmentMaxV2 SegmentMean SegmentMin SegmentMinV2 SegmentProd SegmentProdV2
        SegmentSum SegmentSumV2 Select SelectV2 Sigmoid SigmoidGrad Sign Sin Sinh SobolSample
        SparseBincount SparseMatMul SparseSegmentMean SparseSegmentMeanGrad SparseSegmentMeanGradV2
        SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSqrtNGrad
        SparseSegmentSqrtNGradV2 SparseSegmentSqrtNWithNumSegments SparseSegmentSum SparseSegmentSumGrad
        SparseSegmentSumGradV2 SparseSegmentSumWithNumSegments Spence Sqrt SqrtGrad Square
        SquaredDifference Sub Sum Tan Tanh TanhGrad TruncateDiv TruncateMod UnsortedSegmentMax
        UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum Xdivy Xlog1py Xlogy Zeta
    """,
    "nn": """
        ApproxTopK AvgPool AvgPool3D AvgPool3DGrad AvgPoolGrad BatchNormWithGlobalNormalization
        BatchNormWithGlobalNormalizationGrad BiasAdd BiasAddGrad BiasAddV1 CTCBeamSearchDecoder
        CTCGreedyDecoder CTCLoss CTCLossV2 Conv Conv2D Conv2DBackpropFilter Conv2DBackpropFilterV2
        Conv2DBackpropInput Conv2DBackpropInputV2 Conv3D Conv3DBackpropFilter Conv3DBackpropFilterV2
        Conv3DBackpropInput Conv3DBackpropInputV2 DataFormatDimMap DataFormatVecPermute
        DepthwiseConv2dNative DepthwiseConv2dNativeBackpropFilter DepthwiseConv2dNativeBackpropInput
        Dilation2D Dilation2DBackpropFilter Dilation2DBackpropInput Elu EluGrad FractionalAvgPool
        FractionalAvgPoolGrad FractionalMaxPool FractionalMaxPoolGrad FusedBatchNorm FusedBatchNormGrad
        FusedBatchNormGradV2 FusedBatchNormGradV3 FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D
        FusedResizeAndPadConv2D InTopK InTopKV2 IsotonicRegression L2Loss LRN LRNGrad LeakyRelu
        LeakyReluGrad LogSoftmax MaxPool MaxPool3D MaxPool3DGrad MaxPool3DGradGrad MaxPoolGrad
        MaxPoolGradGrad MaxPoolGradGradV2 MaxPoolGradGradWithArgmax MaxPoolGradV2 MaxPoolGradWithArgmax
        MaxPoolV2 MaxPoolWithArgmax NthElement QuantizedAvgPool
        QuantizedBatchNormWithGlobalNormalization QuantizedBiasAdd QuantizedConv2D
        QuantizedConv2DAndRelu QuantizedConv2DAndReluAndRequantize QuantizedConv2DAndRequantize
        QuantizedConv2DPerChannel QuantizedConv2DWithBias QuantizedConv2DWithBiasAndRelu
        QuantizedConv2DWithBiasAndReluAndRequantize QuantizedConv2DWithBiasAndRequantize
        QuantizedConv2DWithBiasSignedSumAndReluAndRequantize QuantizedConv2DWithBiasSumAndRelu
        QuantizedConv2DWithBiasSumAndReluAndRequantize QuantizedDepthwiseConv2D
        QuantizedDepthwiseConv2DWithBias QuantizedDepthwiseConv2DWithBiasAndRelu
        QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize QuantizedMatMulWithBias
        QuantizedMatMulWithBiasAndDequantize QuantizedMatMulWithBiasAndRelu
        QuantizedMatMulWithBiasAndReluAndRequantize QuantizedMatMulWithBiasAndRequantize
        QuantizedMaxPool QuantizedRelu QuantizedRelu6 QuantizedReluX Relu Relu6 Relu6Grad ReluGrad Selu
        SeluGrad Softmax SoftmaxCrossEntropyWithLogits Softplus SoftplusGrad Softsign SoftsignGrad
        SparseSoftmaxCrossEntropyWithLogits TopK TopKV2
    """,
    "array": """
        BatchMatrixBandPart BatchMatrixDiag BatchMatrixDiagPart BatchMatrixSetDiag BatchToSpace
        BatchToSpaceND Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo CheckNumerics
        CheckNumericsV2 Concat ConcatOffset ConcatV2 ConjugateTranspose Const DeepCopy DepthToSpace
        Dequantize Diag DiagPart DynamicStitch EditDistance Empty EnsureShape ExpandDims
        ExtractImagePatches ExtractVolumePatches FakeQuantWithMinMaxArgs FakeQuantWithMinMaxArgsGradient
        FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsGradient FakeQuantWithMinMaxVarsPerChannel
        FakeQuantWithMinMaxVarsPerChannelGradient Fill Fingerprint Gather GatherNd GatherV2
        GuaranteeConst Identity IdentityN InplaceAdd InplaceSub InplaceUpdate InvertPermutation ListDiff
        LowerBound MatrixBandPart MatrixDiag MatrixDiagPart MatrixDiagPartV2 MatrixDiagPartV3
        MatrixDiagV2 MatrixDiagV3 MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MirrorPad MirrorPadGrad
        OneHot OnesLike Pack Pad PadV2 ParallelConcat ParallelDynamicStitch Placeholder PlaceholderV2
        PlaceholderWithDefault PreventGradient QuantizeAndDequantize QuantizeAndDequantizeV2
        QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeAndDequantizeV4Grad QuantizeV2
        QuantizedConcat QuantizedInstanceNorm QuantizedReshape Rank RefIdentity Reshape
        ResourceStridedSliceAssign Reverse ReverseSequence ReverseV2 ScatterNd ScatterNdNonAliasingAdd
        Shape ShapeN Size Slice SpaceToBatch SpaceToBatchND SpaceToDepth Split SplitV Squeeze
        StopGradient StridedSlice StridedSliceAssign StridedSliceGrad TensorScatterAdd TensorScatterMax
        TensorScatterMin TensorScatterSub TensorScatterUpdate TensorStridedSliceUpdate Tile TileGrad
        Transpose Unique UniqueV2 UniqueWithCounts UniqueWithCountsV2 Unpack UnravelIndex UpperBound
        Where ZerosLike
    """,
    "linalg": """
        BandedTriangularSolve BatchCholesky BatchCholeskyGrad BatchMatrixDeterminant BatchMatrixInverse
        BatchMatrixSolve BatchMatrixSolveLs BatchMatrixTriangularSolve BatchSelfAdjointEig
        BatchSelfAdjointEigV2 BatchSvd Cholesky CholeskyGrad Eig Einsum LogMatrixDeterminant Lu
        MatrixDeterminant MatrixExponential MatrixInverse MatrixLogarithm MatrixSolve MatrixSolveLs
        MatrixSquareRoot MatrixTriangularSolve Qr SelfAdjointEig SelfAdjointEigV2 Svd TridiagonalMatMul
        TridiagonalSolve
    """,
    "random": """
        AllCandidateSampler ComputeAccidentalHits FixedUnigramCandidateSampler
        LearnedUnigramCandidateSampler LogUniformCandidateSampler Multinomial NonDeterministicInts
        ParameterizedTruncatedNormal RandomGamma RandomGammaGrad RandomIndexShuffle RandomPoisson
        RandomPoissonV2 RandomShuffle RandomStandardNormal RandomUniform RandomUniformInt RngReadAndSkip
        RngSkip StatefulRandomBinomial StatefulStandardNormal StatefulStandardNormalV2
        StatefulTruncatedNormal StatefulUniform StatefulUniformFullInt StatefulUniformInt
        StatelessMultinomial StatelessParameterizedTruncatedNormal StatelessRandomBinomial
        StatelessRandomGammaV2 StatelessRandomGammaV3 StatelessRandomGetAlg StatelessRandomGetKeyCounter
        StatelessRandomGetKeyCounterAlg StatelessRandomNormal StatelessRandomNormalV2
        StatelessRandomPoisson StatelessRandomUniform StatelessRandomUniformFullInt
        StatelessRandomUniformFullIntV2 StatelessRandomUniformInt StatelessRandomUniformIntV2
        StatelessRandomUniformV2 StatelessShuffle StatelessTruncatedNormal StatelessTruncatedNormalV2
        ThreadUnsafeUnigramCandidateSampler TruncatedNormal UniformCandidateSampler
    """,
    "control_flow": """
        Assert Case ControlTrigger Enter Exit For If LoopCond Merge NextIteration NoOp
        PartitionedCall RefEnter RefExit RefMerge RefNextIteration RefSelect RefSwitch
        StatefulPartitionedCall StatelessCase StatelessIf StatelessWhile Switch SymbolicGradient ToBool
        While
    """,
    "variables": """
        AssignAddVariableOp AssignSubVariableOp AssignVariableOp ConsumeMutexLock DestroyResourceOp
        DisableCopyOnRead MutexLock MutexV2 ReadVariableOp ResourceGather ResourceGatherNd
        ResourceScatterAdd ResourceScatterDiv ResourceScatterMax ResourceScatterMin ResourceScatterMul
        ResourceScatterSub ResourceScatterUpdate VarHandleOp VarIsInitializedOp VariableShape
        ResourceApplyAdaMax ResourceApplyAdadelta ResourceApplyAdagrad ResourceApplyAdagradDA
        ResourceApplyAdagradV2 ResourceApplyAdam ResourceApplyAdamWithAmsgrad ResourceApplyAddSign
        ResourceApplyCenteredRMSProp ResourceApplyFtrl ResourceApplyFtrlV2 ResourceApplyGradientDescent
        ResourceApplyKerasMomentum ResourceApplyMomentum ResourceApplyPowerSign
        ResourceApplyProximalAdagrad ResourceApplyProximalGradientDescent ResourceApplyRMSProp
        ResourceSparseApplyAdadelta ResourceSparseApplyAdagrad ResourceSparseApplyAdagradDA
        ResourceSparseApplyAdagradV2 ResourceSparseApplyCenteredRMSProp ResourceSparseApplyFtrl
        ResourceSparseApplyFtrlV2 ResourceSparseApplyKerasMomentum ResourceSparseApplyMomentum
        ResourceSparseApplyProximalAdagrad ResourceSparseApplyProximalGradientDescent
        ResourceSparseApplyRMSProp
    """,
    "strings": """
        AsString DecodeBase64 EncodeBase64 ReduceJoin RegexFullMatch RegexReplace StaticRegexFullMatch
        StaticRegexReplace StringFormat StringJoin StringLength StringLower StringNGrams StringSplit
        StringSplitV2 StringStrip StringToHashBucket StringToHashBucketFast StringToHashBucketStrong
        StringUpper Substr UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript
        UnicodeTranscode UnsortedSegmentJoin
    """,
    "sparse": """
        DeserializeManySparse DeserializeSparse SerializeManySparse SerializeSparse SparseAdd
        SparseAddGrad SparseConcat SparseCross SparseCrossHashed SparseCrossV2 SparseDenseCwiseAdd
        SparseDenseCwiseDiv SparseDenseCwiseMul SparseFillEmptyRows SparseFillEmptyRowsGrad
        SparseReduceMax SparseReduceMaxSparse SparseReduceSum SparseReduceSumSparse SparseReorder
        SparseReshape SparseSlice SparseSliceGrad SparseSoftmax SparseSparseMaximum SparseSparseMinimum
        SparseSplit SparseTensorDenseAdd SparseTensorDenseMatMul SparseToDense
    """,
    "tables": """
        AnonymousHashTable AnonymousMutableDenseHashTable AnonymousMutableHashTable
        AnonymousMutableHashTableOfTensors HashTableV2 InitializeTableV2 LookupTableExportV2
        LookupTableFindV2 LookupTableImportV2 LookupTableInsertV2 LookupTableRemoveV2 LookupTableSizeV2
        MutableDenseHashTableV2 MutableHashTableOfTensorsV2 MutableHashTableV2
    """,
    "lists": """
        EmptyTensorList TensorListConcat TensorListConcatLists TensorListConcatV2 TensorListElementShape
        TensorListFromTensor TensorListGather TensorListGetItem TensorListLength TensorListPopBack
        TensorListPushBack TensorListPushBackBatch TensorListReserve TensorListResize TensorListScatter
        TensorListScatterIntoExistingList TensorListScatterV2 TensorListSetItem TensorListSplit
        TensorListStack TensorArray TensorArrayClose TensorArrayCloseV2 TensorArrayCloseV3
        TensorArrayConcat TensorArrayConcatV2 TensorArrayConcatV3 TensorArrayGather TensorArrayGatherV2
        TensorArrayGatherV3 TensorArrayGrad TensorArrayGradV2 TensorArrayGradV3 TensorArrayGradWithShape
        TensorArrayPack TensorArrayRead TensorArrayReadV2 TensorArrayReadV3 TensorArrayScatter
        TensorArrayScatterV2 TensorArrayScatterV3 TensorArraySize TensorArraySizeV2 TensorArraySizeV3
        TensorArraySplit TensorArraySplitV2 TensorArraySplitV3 TensorArrayUnpack TensorArrayV2
        TensorArrayV3 TensorArrayWrite TensorArrayWriteV2 TensorArrayWriteV3
    """,
    "parsing": """
        DecodeCompressed DecodeJSONExample DecodePaddedRaw DecodeRaw ParseExample ParseExampleV2
        ParseSequenceExample ParseSequenceExampleV2 ParseSingleExample ParseSingleSequenceExample
        ParseTensor SerializeTensor StringToNumber
    """,
    "image": """
        AdjustContrast AdjustContrastv2 AdjustHue AdjustSaturation CombinedNonMaxSuppression
        CropAndResize CropAndResizeGradBoxes CropAndResizeGradImage DecodeAndCropJpeg DecodeBmp
        DecodeGif DecodeImage DecodeJpeg DecodeJxl DecodePng DecodeWebP DrawBoundingBoxes
        DrawBoundingBoxesV2 EncodeJpeg EncodeJpegVariableQuality EncodePng ExtractGlimpse
        ExtractGlimpseV2 ExtractJpegShape GenerateBoundingBoxProposals HSVToRGB
        ImageProjectiveTransformV2 ImageProjectiveTransformV3 NonMaxSuppression NonMaxSuppressionV2
        NonMaxSuppressionV3 NonMaxSuppressionV4 NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps
        QuantizedResizeBilinear RGBToHSV RandomCrop ResizeArea ResizeBicubic ResizeBicubicGrad
        ResizeBilinear ResizeBilinearGrad ResizeNearestNeighbor ResizeNearestNeighborGrad
        SampleDistortedBoundingBox SampleDistortedBoundingBoxV2 ScaleAndTranslate ScaleAndTranslateGrad
        StatelessSampleDistortedBoundingBox
    """,
    "datasets": """
        AnonymousIteratorV2 AnonymousIteratorV3 AnonymousMultiDeviceIteratorV3 AnonymousSeedGenerator
        AssertCardinalityDataset AssertNextDataset AutoShardDataset BatchDataset BatchDatasetV2
        BytesProducedStatsDataset ChooseFastestBranchDataset ChooseFastestDataset ConcatenateDataset
        DatasetCardinality DatasetToSingleElement DeleteIterator DeleteSeedGenerator
        DenseToSparseBatchDataset DirectedInterleaveDataset DummySeedGenerator FilterDataset
        FinalizeDataset FlatMapDataset GetOptions GlobalShuffleDataset GroupByReducerDataset
        GroupByWindowDataset IgnoreErrorsDataset IndexFlatMapDataset InterleaveDataset IteratorGetNext
        IteratorGetNextAsOptional IteratorGetNextSync LatencyStatsDataset
        LegacyParallelInterleaveDatasetV2 MakeIterator MapAndBatchDataset MapDataset
        MaxIntraOpParallelismDataset ModelDataset NonSerializableDataset OptimizeDataset
        OptimizeDatasetV2 OptionalFromValue OptionalGetValue OptionalHasValue OptionalNone
        OptionsDataset PaddedBatchDataset PaddedBatchDatasetV2 ParallelBatchDataset
        ParallelFilterDataset ParallelInterleaveDatasetV2 ParallelInterleaveDatasetV3
        ParallelInterleaveDatasetV4 ParallelMapDataset ParallelMapDatasetV2 PrefetchDataset
        PrivateThreadPoolDataset RandomDataset RandomDatasetV2 RangeDataset RebatchDataset
        RebatchDatasetV2 ReduceDataset RepeatDataset RewriteDataset SamplingDataset ScanDataset
        SetStatsAggregatorDataset ShardDataset ShuffleAndRepeatDataset ShuffleAndRepeatDatasetV2
        ShuffleDataset ShuffleDatasetV2 ShuffleDatasetV3 SkipDataset SlidingWindowDataset
        SparseTensorSliceDataset TakeDataset TakeWhileDataset TensorDataset TensorSliceDataset
        ThreadPoolDataset UnbatchDataset UniqueDataset UnwrapDatasetVariant WeightedFlatMapDataset
        WindowDataset WrapDatasetVariant ZipDataset
    """,
}

DEFAULT_OP_ALLOWLIST = OpAllowlist(_DEFAULT_FAMILIES)


def graph_ops(graph_def: "tf.compat.v1.GraphDef") -> list:
    """`(op, node name, function name or "")` for every node of the graph and its library."""
    nodes = [(node.op, node.name, "") for node in graph_def.node]
    for function in graph_def.library.function:
        nodes.extend((node.op, node.name, function.signature.name) for node in function.node_def)
    return nodes


def parse_graph(data: bytes, computation_name: str) -> "tf.compat.v1.GraphDef":
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise SerializationError(f"the graph of {computation_name!r} is not a TensorFlow GraphDef ({error})") from None
    return graph_def


def check_graph(data: bytes, allowlist: OpAllowlist, computation_name: str) -> "tf.compat.v1.GraphDef":
    """Parses a serialized GraphDef and refuses it unless every node is allowed; returns it.

    Raises `DisallowedOpError` naming the first refused op, its node (and function) and the
    computation, plus every other refused op of the graph.
    """
    graph_def = parse_graph(data, computation_name)
    refused = []
    for op, node, function in graph_ops(graph_def):
        if not allowlist.allows(op):
            refused.append((op, node, function))
        else:
            _check_private(_node(graph_def, node, function), op, node, computation_name)
    if refused:
        op, node, function = refused[0]
        where = f"node {node!r}" + (f" in function {function!r}" if function else "")
        others = sorted({r[0] for r in refused[1:]} - {op})
        raise DisallowedOpError(
            f"the computation {computation_name!r} uses the op {op} ({where}), which is not in the op allowlist"
            + (f"; it also uses {', '.join(others)}" if others else "")
            + ". Deserialized graphs may not reach files, Python, the network or other processes; "
            "extend the allowlist (fedsim.core.op_allowlist) only for computations you trust"
        )
    return graph_def


def _check_private(node_def, op: str, node: str, computation_name: str) -> None:
    """A resource a deserialized graph creates (a variable, a hash table, a mutex, ...) must be its
    own: no container, no shared name (variables: the anonymous one), no node-name sharing, or
    two computations could pass values through it."""
    attr = node_def.attr
    if "shared_name" not in attr and "container" not in attr:
        return
    allowed = (ANONYMOUS_SHARED_NAME,) if op == "VarHandleOp" else (b"", ANONYMOUS_SHARED_NAME)
    shared = attr["shared_name"].s if "shared_name" in attr else b""
    if shared not in allowed or ("container" in attr and attr["container"].s) or (
            "use_node_name_sharing" in attr and attr["use_node_name_sharing"].b):
        raise DisallowedOpError(
            f"the computation {computation_name!r} has a {op} (node {node!r}) that names a shared resource "
            f"{shared[:60]!r}; a deserialized graph may only create resources of its own"
        )


def _node(graph_def, name: str, function: str):
    if not function:
        return next(n for n in graph_def.node if n.name == name)
    library = next(f for f in graph_def.library.function if f.signature.name == function)
    return next(n for n in library.node_def if n.name == name)
