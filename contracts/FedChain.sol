// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title FedChain: one federated-learning federation per deployment.
/// @notice Learners submit the CIDs of their model updates per round; the aggregator publishes
/// the CID of each round's global model, which opens the next round. Events carry the full
/// history (who submitted what, with how many examples, what was averaged, evaluations);
/// storage keeps only what a transaction must check, so gas stays flat across rounds.
/// @dev CIDs are binary CIDs (CIDv0 or CIDv1), at most 63 bytes, stored packed in two slots.
contract FedChain {
    /// @dev Per-learner record. `index` is 1-based and stable: it is the learner's bit in the
    /// per-round bitmaps, and survives removal so a re-added learner keeps its history.
    struct Learner {
        bool active;
        uint32 index;
    }

    /// @dev Hot state read by every round transaction, packed into one slot.
    struct State {
        address aggregator;
        uint64 round;
        bool finished;
    }

    /// @dev A CID packed as: a = length byte followed by the first 31 bytes, b = the next 32.
    struct PackedCid {
        bytes32 a;
        bytes32 b;
    }

    uint256 public constant MAX_CID_LENGTH = 63;
    uint256 public constant MAX_METRICS_LENGTH = 1024;
    /// @dev 2**40 examples: far beyond any learner's data, small enough that FedAvg weights
    /// stay exact and finite in floating point.
    uint256 public constant MAX_EXAMPLES = 1 << 40;

    /// @notice The account that manages learners and the aggregator role.
    address public owner;
    uint32 private _learnerCount;
    uint32 private _learnerSlots;
    State private _state;
    bytes private _plan;

    mapping(address => Learner) private _learners;
    mapping(uint256 => PackedCid) private _globals;
    /// @dev round => word => bitmap of learner indices that submitted / reported in that round.
    mapping(uint256 => mapping(uint256 => uint256)) private _submitted;
    mapping(uint256 => mapping(uint256 => uint256)) private _reported;
    /// @notice The account an ownership transfer in progress goes to; zero when none is.
    address public pendingOwner;

    error NotOwner(address caller);
    error NotAggregator(address caller);
    error NotLearner(address caller);
    error ZeroAddress();
    error AlreadyLearner(address learner);
    error UnknownLearner(address learner);
    error GenesisAlreadySet();
    error NotStarted();
    error FederationFinished();
    error WrongRound(uint256 given, uint256 open);
    error AlreadySubmitted(uint256 round, address learner);
    error NotSubmitted(uint256 round, address learner);
    error IncludedNotAscending(uint256 index, address learner);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 max);
    error NoExamples();
    error TooManyExamples(uint256 given, uint256 max);
    error MetricsTooLarge(uint256 size, uint256 max);
    error NoGlobalModel(uint256 round);
    error AlreadyReported(uint256 round, address learner);
    /// @notice Only the pending owner (see transferOwnership) may accept the ownership.
    error NotPendingOwner(address caller);

    event LearnerAdded(address indexed learner);
    event LearnerRemoved(address indexed learner);
    event AggregatorChanged(address indexed previous, address indexed next);
    event GenesisSet(bytes modelCid, bytes planCid);
    event UpdateSubmitted(
        uint256 indexed round, address indexed learner, bytes modelCid, uint256 numExamples
    );
    event GlobalModelPublished(uint256 indexed round, bytes modelCid, address[] included);
    event EvaluationReported(
        uint256 indexed round, address indexed learner, uint256 numExamples, bytes metrics
    );
    event Finished(uint256 lastRound);
    /// @notice The owner offered ownership to `newOwner` (the zero address: offer withdrawn).
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    /// @notice `newOwner` accepted the ownership and is now the owner.
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyAggregator() {
        if (msg.sender != _state.aggregator) revert NotAggregator(msg.sender);
        _;
    }

    /// @notice Deploys a federation; the deployer becomes the owner.
    /// @param aggregator_ The only account allowed to set the genesis and publish global models.
    constructor(address aggregator_) {
        if (aggregator_ == address(0)) revert ZeroAddress();
        owner = msg.sender;
        _state.aggregator = aggregator_;
        emit AggregatorChanged(address(0), aggregator_);
    }

    // ---------------------------------------------------------------- membership

    /// @notice Owner only: registers learners. Emits LearnerAdded for each.
    function addLearners(address[] calldata learners) external onlyOwner {
        uint32 count = _learnerCount;
        uint32 slots = _learnerSlots;
        for (uint256 i = 0; i < learners.length; ++i) {
            address who = learners[i];
            if (who == address(0)) revert ZeroAddress();
            Learner memory l = _learners[who];
            if (l.active) revert AlreadyLearner(who);
            if (l.index == 0) l.index = ++slots;
            l.active = true;
            _learners[who] = l;
            ++count;
            emit LearnerAdded(who);
        }
        _learnerCount = count;
        _learnerSlots = slots;
    }

    /// @notice Owner only: deregisters a learner; its past submissions stay on record.
    function removeLearner(address learner) external onlyOwner {
        if (!_learners[learner].active) revert UnknownLearner(learner);
        _learners[learner].active = false;
        unchecked {
            --_learnerCount; // counts the active learners, this one among them
        }
        emit LearnerRemoved(learner);
    }

    /// @notice Owner only: hands the aggregator role to another account.
    function setAggregator(address next) external onlyOwner {
        if (next == address(0)) revert ZeroAddress();
        emit AggregatorChanged(_state.aggregator, next);
        _state.aggregator = next;
    }

    /// @notice Whether `who` is a registered (active) learner.
    function isLearner(address who) external view returns (bool) {
        return _learners[who].active;
    }

    /// @notice Number of registered (active) learners.
    function learnerCount() external view returns (uint256) {
        return _learnerCount;
    }

    /// @notice The account allowed to publish global models.
    function aggregator() external view returns (address) {
        return _state.aggregator;
    }

    // ---------------------------------------------------------------- ownership

    /// @notice Owner only: offers ownership to `newOwner`, who takes it with acceptOwnership;
    /// the current owner stays in charge until then. A later call replaces the offer, and
    /// the zero address withdraws it. Emits OwnershipTransferStarted.
    function transferOwnership(address newOwner) external onlyOwner {
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(msg.sender, newOwner);
    }

    /// @notice The pending owner only: takes over the ownership offered by transferOwnership.
    /// Emits OwnershipTransferred.
    function acceptOwnership() external {
        address next = pendingOwner;
        if (msg.sender != next) revert NotPendingOwner(msg.sender);
        delete pendingOwner;
        emit OwnershipTransferred(owner, next);
        owner = next;
    }

    // ---------------------------------------------------------------- rounds

    /// @notice Aggregator only, once: records the initial model and the run's plan, opens round 1.
    /// @param modelCid CID of the genesis (round 0) global model.
    /// @param planCid CID of the JSON plan (strategy and parameters, rounds, codec version).
    function setGenesis(bytes calldata modelCid, bytes calldata planCid) external onlyAggregator {
        State memory s = _state;
        if (s.round != 0) revert GenesisAlreadySet();
        if (s.finished) revert FederationFinished();
        _globals[0] = _pack(modelCid);
        _checkCid(planCid);
        _plan = planCid;
        _state.round = 1;
        emit GenesisSet(modelCid, planCid);
    }

    /// @notice Learners only: submits the CID of this learner's update for the open round, once.
    /// @param numExamples Number of training examples behind the update (the FedAvg weight).
    function submitUpdate(uint256 round, bytes calldata modelCid, uint256 numExamples) external {
        State memory s = _state;
        uint256 index = _learnerIndex();
        _checkOpen(s, round);
        _checkCid(modelCid);
        if (numExamples == 0) revert NoExamples();
        if (numExamples > MAX_EXAMPLES) revert TooManyExamples(numExamples, MAX_EXAMPLES);
        if (!_testAndSet(_submitted[round], index)) revert AlreadySubmitted(round, msg.sender);
        emit UpdateSubmitted(round, msg.sender, modelCid, numExamples);
    }

    /// @notice Aggregator only: publishes the open round's global model and opens the next round.
    /// @param included The learners whose updates were averaged, in strictly ascending address
    /// order (which also rules out duplicates); each must have submitted in `round`. May be
    /// empty when a round closes without usable updates (then the model is carried over).
    function publishGlobal(uint256 round, bytes calldata modelCid, address[] calldata included)
        external
        onlyAggregator
    {
        State memory s = _state;
        _checkOpen(s, round);
        mapping(uint256 => uint256) storage submitted = _submitted[round];
        address prev = address(0);
        for (uint256 i = 0; i < included.length; ++i) {
            address who = included[i];
            if (who <= prev) revert IncludedNotAscending(i, who);
            prev = who;
            if (!_isSet(submitted, _learners[who].index)) revert NotSubmitted(round, who);
        }
        _globals[round] = _pack(modelCid);
        _state.round = s.round + 1;
        emit GlobalModelPublished(round, modelCid, included);
    }

    /// @notice Learners only, once per round: reports the evaluation of `round`'s global model.
    /// @param metrics A small JSON object (at most 1 KiB), e.g. {"loss":0.31,"accuracy":0.9}.
    function reportEvaluation(uint256 round, uint256 numExamples, bytes calldata metrics)
        external
    {
        uint256 index = _learnerIndex();
        if (round >= _state.round) revert NoGlobalModel(round);
        if (metrics.length > MAX_METRICS_LENGTH) {
            revert MetricsTooLarge(metrics.length, MAX_METRICS_LENGTH);
        }
        if (!_testAndSet(_reported[round], index)) revert AlreadyReported(round, msg.sender);
        emit EvaluationReported(round, msg.sender, numExamples, metrics);
    }

    /// @notice Aggregator only: ends the federation; no submissions or global models after it.
    function finish() external onlyAggregator {
        State memory s = _state;
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        _state.finished = true;
        unchecked {
            emit Finished(s.round - 1); // s.round >= 1 here
        }
    }

    // ---------------------------------------------------------------- views

    /// @notice 0 before genesis, else the round open for updates (after finish: one past the last).
    function currentRound() external view returns (uint256) {
        return _state.round;
    }

    /// @notice Whether the aggregator has finished the federation.
    function finished() external view returns (bool) {
        return _state.finished;
    }

    /// @notice CID of the genesis model (empty before genesis).
    function genesis() external view returns (bytes memory) {
        return _unpack(_globals[0]);
    }

    /// @notice CID of the run's JSON plan (empty before genesis).
    function plan() external view returns (bytes memory) {
        return _plan;
    }

    /// @notice CID of `round`'s global model; round 0 is the genesis model. Empty if unpublished.
    function globalModel(uint256 round) external view returns (bytes memory) {
        return _unpack(_globals[round]);
    }

    /// @notice Whether `learner` submitted an update in `round`.
    function hasSubmitted(uint256 round, address learner) external view returns (bool) {
        return _isSet(_submitted[round], _learners[learner].index);
    }

    /// @notice Whether `learner` reported an evaluation of `round`'s global model.
    function hasReported(uint256 round, address learner) external view returns (bool) {
        return _isSet(_reported[round], _learners[learner].index);
    }

    // ---------------------------------------------------------------- internals

    /// @dev The sender's learner index (its bit in the per-round bitmaps); reverts with
    /// NotLearner unless the sender is an active learner.
    function _learnerIndex() private view returns (uint256) {
        Learner memory l = _learners[msg.sender];
        if (!l.active) revert NotLearner(msg.sender);
        return l.index;
    }

    /// @dev Sets learner `index`'s bit in a round's bitmap; false if it was set already.
    function _testAndSet(mapping(uint256 => uint256) storage bitmap, uint256 index)
        private
        returns (bool)
    {
        uint256 word = index >> 8;
        uint256 bit = 1 << (index & 0xff);
        uint256 bits = bitmap[word];
        if (bits & bit != 0) return false;
        bitmap[word] = bits | bit;
        return true;
    }

    /// @dev Whether learner `index`'s bit is set in a round's bitmap (index 0: no learner).
    function _isSet(mapping(uint256 => uint256) storage bitmap, uint256 index)
        private
        view
        returns (bool)
    {
        return index != 0 && bitmap[index >> 8] & (1 << (index & 0xff)) != 0;
    }

    function _checkOpen(State memory s, uint256 round) private pure {
        if (s.round == 0) revert NotStarted();
        if (s.finished) revert FederationFinished();
        if (round != s.round) revert WrongRound(round, s.round);
    }

    function _checkCid(bytes calldata cid) private pure {
        if (cid.length == 0) revert EmptyCid();
        if (cid.length > MAX_CID_LENGTH) revert CidTooLong(cid.length, MAX_CID_LENGTH);
    }

    function _pack(bytes calldata cid) private pure returns (PackedCid memory p) {
        _checkCid(cid);
        bytes memory buf = abi.encodePacked(uint8(cid.length), cid, new bytes(63 - cid.length));
        bytes32 a;
        bytes32 b;
        assembly {
            a := mload(add(buf, 32))
            b := mload(add(buf, 64))
        }
        p.a = a;
        p.b = b;
    }

    function _unpack(PackedCid storage p) private view returns (bytes memory out) {
        bytes32 a = p.a;
        uint256 len = uint8(a[0]);
        out = new bytes(len);
        bytes memory buf = abi.encodePacked(a, p.b);
        for (uint256 i = 0; i < len; ++i) {
            out[i] = buf[i + 1];
        }
    }
}
